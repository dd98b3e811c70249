//! The ingest role: the HTTP gateway in front of the pipeline. It validates,
//! identifies the user, rate-limits, answers sold-out and inactive campaigns
//! from a short-lived cache, and queues everything else on the requests
//! topic. It reads campaign state from Redis but never writes it.

mod body;
mod cache;
mod config;
mod error;
mod internal_events;
mod listener;
mod problem;
mod routes;
mod state;

pub use config::IngestConfig;
pub use error::IngestError;

use std::sync::Arc;

use seckill_store::OrderStore;
use tokio_util::sync::CancellationToken;

/// Serves the HTTP API until `cancel` fires, then finishes the requests in
/// flight and returns.
pub async fn serve(
    config: IngestConfig,
    store: Arc<dyn OrderStore>,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let state = state::App::connect(config.clone(), store, cancel.clone()).await?;
    let app = routes::router(state);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| IngestError::Bind {
            addr: config.http_addr,
            source,
        })?;
    tracing::info!(addr = %config.http_addr, "ingest listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(|source| IngestError::Bind {
            addr: config.http_addr,
            source,
        })
}
