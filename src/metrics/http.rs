//! The metrics endpoint: `GET /metrics` in the Prometheus text format, on its own small thread.
//!
//! The listener is bound before the server starts, so a taken or invalid address fails start-up
//! instead of being discovered at the first scrape. The thread does nothing between scrapes and
//! never touches the shards or the uplink core: it only reads the process-wide atomics.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::Context as _;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use tokio::sync::watch;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running metrics endpoint.
pub struct MetricsEndpoint {
    pub local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Binds `listen` and serves `/metrics` until `shutdown` turns true.
    pub fn start(
        listen: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<MetricsEndpoint> {
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot bind the metrics endpoint to {listen}"))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("cannot build the metrics endpoint's runtime")?;
        let thread = std::thread::Builder::new()
            .name("tcp-integration-metrics".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            tracing::error!("metrics endpoint {local_addr}: {e}");
                            return;
                        }
                    };
                    let router = Router::new().route("/metrics", get(scrape));
                    let stopped = async move {
                        let _ = shutdown.wait_for(|stop| *stop).await;
                    };
                    if let Err(e) = axum::serve(listener, router)
                        .with_graceful_shutdown(stopped)
                        .await
                    {
                        tracing::error!("metrics endpoint {local_addr} failed: {e}");
                    }
                })
            })
            .context("cannot start the metrics endpoint thread")?;
        tracing::info!("metrics at http://{local_addr}/metrics");
        Ok(MetricsEndpoint {
            local_addr,
            thread: Some(thread),
        })
    }

    /// Waits for the endpoint's thread after shutdown was signalled.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn scrape() -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        super::render_prometheus(),
    )
}
