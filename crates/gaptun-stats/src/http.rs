//! The dashboard's HTTP server (`--dashboard ADDR`): the page, `/api/stats`, `/api/history`
//! and `/metrics`, all read from the collector's published snapshot.
//!
//! HTTP/1.1 only, GET and HEAD only, optional basic auth on every path. Connections are capped
//! and must send their headers within a few seconds, so a slow or greedy client cannot pile
//! up tasks in the daemon.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::collect::Collector;

/// HTTP connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;

/// Time a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The page and its script, built into the binary (no CDN: it works offline).
const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");

/// What the page may load: only its own script and the API, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The user and password the dashboard asks for (HTTP basic auth).
#[derive(Clone)]
pub struct Credentials {
    /// SHA-256 of `user:password`: compared in constant time, whatever the lengths.
    digest: [u8; 32],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    pub fn new(user: &str, password: &str) -> Self {
        Self {
            digest: Sha256::digest(format!("{user}:{password}")).into(),
        }
    }

    /// Whether an `Authorization` header value carries these credentials.
    fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        let Some(value) = header.and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let Some((scheme, encoded)) = value.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(&decoded).into();
        given
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The dashboard could not start.
#[derive(Debug, Error)]
pub enum DashboardError {
    #[error("cannot listen on {addr} (dashboard): {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// A bound dashboard, ready to serve.
#[derive(Debug)]
pub struct Dashboard {
    listener: TcpListener,
    auth: Option<Credentials>,
}

impl Dashboard {
    /// Binds `addr`; `auth`: the credentials every request must carry.
    pub async fn bind(addr: SocketAddr, auth: Option<Credentials>) -> Result<Self, DashboardError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DashboardError::Bind { addr, source })?;
        Ok(Self { listener, auth })
    }

    /// The bound address (with the actual port when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `collector`'s figures until the task is dropped.
    pub async fn serve(self, collector: Collector) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let shared = Arc::new((collector, self.auth));
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!("dashboard accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, Infallible>(respond(&req, &shared.0, shared.1.as_ref())) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                if let Err(e) = served {
                    debug!(%peer, "dashboard connection: {e}");
                }
                drop(permit);
            });
        }
    }
}

/// The start-up warning for a dashboard anyone on the network can read: it shows every
/// client's address and traffic.
pub fn open_dashboard_warning(addr: SocketAddr, has_password: bool) -> Option<String> {
    (!addr.ip().is_loopback() && !has_password).then(|| {
        format!(
            "DASHBOARD ON {addr} HAS NO PASSWORD: anyone who reaches it sees every connection's \
             address and traffic; listen on 127.0.0.1 or set --dashboard-user and \
             --dashboard-password"
        )
    })
}

/// Answers one request.
fn respond(
    req: &Request<Incoming>,
    collector: &Collector,
    auth: Option<&Credentials>,
) -> Response<Full<Bytes>> {
    if let Some(creds) = auth
        && !creds.accepts(req.headers().get(header::AUTHORIZATION))
    {
        let mut r = plain(StatusCode::UNAUTHORIZED, "authentication required\n");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"gaptun\", charset=\"UTF-8\""),
        );
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let (body, content_type) = match req.uri().path() {
        "/" | "/index.html" => (INDEX_HTML.to_owned(), "text/html; charset=utf-8"),
        "/app.js" => (APP_JS.to_owned(), "text/javascript; charset=utf-8"),
        "/api/stats" => match serde_json::to_string(&*collector.latest()) {
            Ok(json) => (json, "application/json"),
            Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        },
        "/api/history" => match serde_json::to_string(&collector.history()) {
            Ok(json) => (json, "application/json"),
            Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        },
        "/metrics" => match crate::prom::render(&collector.latest()) {
            Ok(text) => (text, crate::prom::CONTENT_TYPE),
            Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        },
        _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(h);
    r
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    secure(h);
    r
}

/// Headers every answer carries: nothing cached (the figures change every second), nothing
/// sniffed or framed, the page confined to its own origin.
fn secure(h: &mut hyper::HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> HeaderValue {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        );
        HeaderValue::from_str(&v).unwrap()
    }

    #[test]
    fn credentials_are_checked() {
        let c = Credentials::new("admin", "s3cret:x");
        assert!(c.accepts(Some(&basic("admin:s3cret:x"))));
        assert!(c.accepts(Some(&HeaderValue::from_static(
            "basic YWRtaW46czNjcmV0Ong="
        ))));
        assert!(!c.accepts(Some(&basic("admin:s3cret"))));
        assert!(!c.accepts(Some(&basic("Admin:s3cret:x"))));
        assert!(!c.accepts(Some(&HeaderValue::from_static("Bearer abc"))));
        assert!(!c.accepts(Some(&HeaderValue::from_static("Basic !!!"))));
        assert!(!c.accepts(None));
    }

    #[test]
    fn open_dashboard_is_warned_about() {
        let lan: SocketAddr = "0.0.0.0:7500".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7500".parse().unwrap();
        assert!(
            open_dashboard_warning(lan, false)
                .unwrap()
                .starts_with("DASHBOARD ON 0.0.0.0:7500 HAS NO PASSWORD")
        );
        assert_eq!(open_dashboard_warning(lan, true), None);
        assert_eq!(open_dashboard_warning(local, false), None);
        assert_eq!(
            open_dashboard_warning("[::1]:7500".parse().unwrap(), false),
            None
        );
    }
}
