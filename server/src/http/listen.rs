//! The connection loop under the router. `axum::serve` sets no header-read timeout and
//! admits any number of connections, so a client that sends half a request header holds a
//! socket (and a task) forever. Here every connection gets a deadline for each request
//! header (which also closes idle keep-alive connections), and connections beyond a cap are
//! closed at once instead of queueing.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Bounds on what a client can hold without sending a whole request.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a client may take to send a request's header, counted from its first byte
    /// or, on a kept-alive connection, from the end of the previous response: a connection
    /// idle for longer is closed.
    pub header_read_timeout: Duration,
    /// Open connections at once; beyond it, new ones are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
        }
    }
}

/// Accepts connections and serves `router` on each (HTTP/1.1) until `signal` resolves; then
/// stops accepting and waits for the open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    signal: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let service = TowerToHyperService::new(router);
    tokio::pin!(signal);
    // Refusals are logged at most once a minute: a flood must not also flood the log.
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or the peer gave up: wait a moment instead of
                    // spinning on an error that the next accept would repeat.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    "{} connections open (--max-connections): closing new ones until some end",
                    limits.max_connections
                );
                last_refusal_log = Some(Instant::now());
            }
            continue;
        };
        // Small responses (SSE tokens) go out as written.
        let _ = stream.set_nodelay(true);
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                // Timeouts and resets are the client's doing; nothing to act on here.
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
