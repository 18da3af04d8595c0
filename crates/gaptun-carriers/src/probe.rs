//! What a client that is not gaptun gets: the decoy web server's answers (its decrypted bytes
//! are proxied there), or a plain 404 page. Either way it sees an ordinary HTTPS server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a silent non-gaptun client may keep its connection before it is closed (about what
/// web servers allow for a request to arrive).
const IDLE_LIMIT: Duration = Duration::from_secs(20);

/// Longest request head read before answering 404.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The body of the 404 page (HTTP/1.1 and HTTP/3).
pub(crate) const NOT_FOUND_BODY: &str = "<html>\r\n<head><title>404 Not Found</title></head>\r\n\
<body>\r\n<center><h1>404 Not Found</h1></center>\r\n</body>\r\n</html>\r\n";

/// What non-gaptun clients are handed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Decoy {
    /// A plain 404 page.
    #[default]
    NotFound,
    /// A web server (plain HTTP) that gets the client's decrypted bytes and answers it.
    Proxy(SocketAddr),
}

/// Serves a non-gaptun client on `stream`, of which `first` was already read.
pub(crate) async fn serve<S>(decoy: &Decoy, stream: S, first: Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = match decoy {
        Decoy::NotFound => not_found(stream, first).await,
        Decoy::Proxy(addr) => proxy(*addr, stream, first).await,
    };
    if let Err(e) = result {
        tracing::debug!("decoy connection ended: {e}");
    }
}

async fn proxy<S>(addr: SocketAddr, mut stream: S, first: Vec<u8>) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            // The decoy is down: answer as a web server with nothing there would.
            tracing::warn!(%addr, "decoy unreachable ({e}); answering 404");
            return not_found(stream, first).await;
        }
    };
    upstream.set_nodelay(true)?;
    upstream.write_all(&first).await?;
    tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
    Ok(())
}

/// Reads a request head (or waits for one until [`IDLE_LIMIT`]), answers 404 and closes.
async fn not_found<S>(mut stream: S, mut head: Vec<u8>) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        match tokio::time::timeout(IDLE_LIMIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => {
                // Closed or silent: close as a web server would.
                let _ = stream.shutdown().await;
                return Ok(());
            }
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
    let response = format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
Connection: close\r\n\r\n{NOT_FOUND_BODY}",
        NOT_FOUND_BODY.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
