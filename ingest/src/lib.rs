//! The ingest role: the HTTP gateway in front of the pipeline. It validates,
//! identifies the user, rate-limits, answers sold-out and inactive campaigns
//! from a short-lived cache, and queues everything else on the requests
//! topic. It reads campaign state from Redis but never writes it.

// Handlers answer errors with a `Problem`, the HTTP answer itself; boxing
// it on every path would buy nothing.
#![allow(clippy::result_large_err)]

mod body;
mod cache;
mod config;
mod error;
mod identity;
mod internal_events;
mod listener;
mod lookup;
mod openapi;
mod position;
mod problem;
mod routes;
mod state;

pub use config::{BucketConfig, IngestConfig};
pub use error::IngestError;
pub use identity::{mint, AuthMode, IdentityConfig, JwksSource, TokenClaims};

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use seckill_store::OrderStore;
use tokio_util::sync::CancellationToken;

/// How long the requests in flight get once `cancel` fires. A request that
/// waits for its decision (`?wait_ms=`) may wait for seconds, and for ever
/// as far as this process goes when the broker is down; past this it is
/// answered 503 (outcome unknown). Nothing is lost by that: a request that
/// was queued is still decided, and a retry with the same Idempotency-Key
/// gets the stored decision.
const DRAIN_ON_STOP: Duration = Duration::from_secs(2);
/// How long the server gets, past the drain, to write those answers.
const ANSWER_ON_STOP: Duration = Duration::from_secs(1);

/// Serves the HTTP API until `cancel` fires, then finishes the requests in
/// flight (for at most [`DRAIN_ON_STOP`]) and returns.
pub async fn serve(
    config: IngestConfig,
    store: Arc<dyn OrderStore>,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let state = state::App::connect(config.clone(), store, cancel.clone()).await?;
    let stopping = cancel.clone();
    let app = routes::router(Arc::clone(&state)).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let stopping = stopping.clone();
            async move { answer_before_the_drain_ends(&stopping, req, next).await }
        },
    ));
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| IngestError::Bind {
            addr: config.http_addr,
            source,
        })?;
    tracing::info!(addr = %config.http_addr, "ingest listening");
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(cancel.clone().cancelled_owned())
    .into_future();
    let drained = async {
        cancel.cancelled().await;
        tokio::time::sleep(DRAIN_ON_STOP + ANSWER_ON_STOP).await;
    };
    tokio::select! {
        served = server => served.map_err(|source| IngestError::Bind {
            addr: config.http_addr,
            source,
        }),
        _ = drained => {
            tracing::warn!(
                drain_ms = (DRAIN_ON_STOP + ANSWER_ON_STOP).as_millis() as u64,
                purchases_in_flight = state.config.max_inflight - state.inflight.available_permits(),
                "connections still open after the drain; dropped (a request already queued is \
                 still decided: its caller can read the decision or retry with the same \
                 Idempotency-Key)"
            );
            Ok(())
        }
    }
}

/// Runs a request; once `stopping` fired it has [`DRAIN_ON_STOP`] left,
/// then it is answered 503 instead (a wait for a decision that this
/// process may never see ends here, and the connection closes cleanly).
async fn answer_before_the_drain_ends(
    stopping: &CancellationToken,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    tokio::select! {
        resp = next.run(req) => resp,
        _ = async {
            stopping.cancelled().await;
            tokio::time::sleep(DRAIN_ON_STOP).await;
        } => {
            tracing::info!("a request still in flight at the end of the drain: answered 503");
            problem::Problem::unavailable(
                "this instance is shutting down; the outcome of the request is unknown: retry \
                 with the same Idempotency-Key, or read GET /v1/requests/{request_id}",
            )
            .retry_after(1)
            .into_response()
        }
    }
}
