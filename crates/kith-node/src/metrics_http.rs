//! A minimal HTTP endpoint that serves the Prometheus registry at
//! `/metrics`.
//!
//! It answers one request per connection, reads at most 8 KiB of request
//! head with a 5-second deadline, serves at most 16 connections at once, and
//! answers anything but `GET /metrics` with 404 — enough for a scraper,
//! nothing for an attacker to grow. Before each scrape it runs the
//! [`Refresh`] it was given (at most [`REFRESH_DEADLINE`]), so values kept
//! elsewhere, such as what the mailbox volunteer holds, are current.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const MAX_HEAD: usize = 8 * 1024;
const READ_DEADLINE: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;
/// Longest a [`Refresh`] may take; the registry is served as it stands
/// after that.
pub const REFRESH_DEADLINE: Duration = Duration::from_secs(1);

/// Work run before each scrape to bring metrics kept elsewhere up to date.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Binds `addr` and returns the bound address and the serving future.
/// `refresh`, if any, runs before each scrape.
pub async fn bind(
    addr: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    refresh: Option<Refresh>,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Over the limit: close at once.
                drop(stream);
                continue;
            };
            let registry = registry.clone();
            let refresh = refresh.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    READ_DEADLINE,
                    answer(stream, &registry, refresh.as_ref()),
                )
                .await;
                drop(permit);
            });
        }
    };
    Ok((bound, serve))
}

async fn answer(
    mut stream: TcpStream,
    registry: &Mutex<Registry>,
    refresh: Option<&Refresh>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request_line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|b| *b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let response = if method == Some(b"GET") && path == Some(b"/metrics") {
        if let Some(refresh) = refresh {
            let _ = tokio::time::timeout(REFRESH_DEADLINE, refresh()).await;
        }
        let mut body = String::new();
        let encoded = match registry.lock() {
            Ok(registry) => prometheus_client::encoding::text::encode(&mut body, &registry).is_ok(),
            Err(_) => false,
        };
        if encoded {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        } else {
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_owned()
        }
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 22\r\nConnection: close\r\n\r\ntry GET /metrics here\n".to_owned()
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
