//! Accept loops that survive transient errors.
//!
//! `accept()` fails for reasons that say nothing about the listener (the peer reset before we
//! accepted, or we ran out of file descriptors under load). A proxy must not stop serving
//! because of them; it pauses briefly (so running out of descriptors does not spin) and goes on.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Pause after a failed `accept()`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts the next connection, retrying transient failures.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, peer);
            }
            Err(e) => {
                log_accept_error(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

fn log_accept_error(e: &io::Error) {
    warn!("accept failed: {e}");
}
