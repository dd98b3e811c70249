//! Putting a request on the requests topic, and waiting for its outcome.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::producer::FutureRecord;
use seckill_schemas::{DecisionStatus, RequestAccepted, RequestEvent};
use tokio::sync::oneshot;

use crate::internal_events;
use crate::listener::Wakeup;
use crate::problem::Problem;
use crate::state::App;

/// Produces `event` keyed by its campaign and waits for the broker's
/// acknowledgement. Without one the request's fate is unknown, and the
/// client is told so (503 with the request id), never told it failed.
/// A command goes out signed with the command key (purchases need none).
/// It goes to stock bucket `bucket` of the event's campaign: keyed
/// `<campaign>#<bucket>` (the campaign id for bucket 0), a command signed
/// for that bucket (see [`super::buckets`]).
pub(crate) async fn enqueue(app: &App, event: &RequestEvent, bucket: u32) -> Result<(), Problem> {
    let payload = if event.needs_auth() {
        let mut signed = event.clone();
        signed.sign_for_bucket(&app.config.command_key, bucket);
        serde_json::to_vec(&signed)
    } else {
        serde_json::to_vec(event)
    }
    .unwrap_or_default();
    let key = seckill_schemas::bucket_key(event.campaign_id(), bucket);
    let record = FutureRecord::to(&app.config.topics.requests)
        .key(key.as_str())
        .payload(&payload);
    let started = Instant::now();
    match app.producer.send(record, Duration::from_secs(1)).await {
        Ok(_) => {
            internal_events::produced(started.elapsed().as_secs_f64());
            Ok(())
        }
        Err((e, _)) => {
            internal_events::produce_failed(event.request_id(), &e);
            Err(Problem::unavailable(format!(
                "could not confirm that the request was queued ({e}); it may or may not be \
                 processed: retry with the same Idempotency-Key, which is safe"
            ))
            .request_id(event.request_id())
            .retry_after(1))
        }
    }
}

/// Waits up to `wait` for the listener to deliver the outcome of
/// `request_id`. `check` reads the outcome from Redis; it runs once a second
/// and at the end, so an event the listener missed still ends the wait.
pub(crate) async fn wait_for<T, F, Fut>(
    app: &App,
    request_id: &str,
    mut rx: oneshot::Receiver<Wakeup>,
    wait: Duration,
    pick: impl Fn(Wakeup) -> Option<T>,
    check: F,
) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + wait;
    let mut listening = true;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let slice = remaining.min(Duration::from_secs(1));
        if listening {
            match tokio::time::timeout(slice, &mut rx).await {
                Ok(Ok(w)) => {
                    if let Some(t) = pick(w) {
                        return Some(t);
                    }
                    listening = false;
                }
                Ok(Err(_)) => listening = false,
                Err(_) => {}
            }
        } else {
            tokio::time::sleep(slice).await;
        }
        if let Some(t) = check().await {
            app.waiters.forget(request_id);
            return Some(t);
        }
        if Instant::now() >= deadline {
            app.waiters.forget(request_id);
            return None;
        }
    }
}

/// Queues `event` and, when `wait` is set, waits that long for its outcome
/// (see [`wait_for`]). `Ok(None)`: queued, no outcome yet.
pub(crate) async fn submit<T, F, Fut>(
    app: &App,
    event: &RequestEvent,
    wait: Option<Duration>,
    pick: impl Fn(Wakeup) -> Option<T>,
    check: F,
) -> Result<Option<T>, Problem>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let bucket = super::buckets::route(app, event);
    submit_in(app, event, bucket, wait, pick, check).await
}

/// [`submit`] to stock bucket `bucket` of the event's campaign.
pub(crate) async fn submit_in<T, F, Fut>(
    app: &App,
    event: &RequestEvent,
    bucket: u32,
    wait: Option<Duration>,
    pick: impl Fn(Wakeup) -> Option<T>,
    check: F,
) -> Result<Option<T>, Problem>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let request_id = event.request_id();
    // Registered before the produce, so an outcome that comes back at once
    // is not missed.
    let rx = wait.map(|_| app.waiters.register(request_id));
    if let Err(p) = enqueue(app, event, bucket).await {
        app.waiters.forget(request_id);
        return Err(p);
    }
    match (rx, wait) {
        (Some(rx), Some(wait)) => Ok(wait_for(app, request_id, rx, wait, pick, check).await),
        _ => Ok(None),
    }
}

/// 202: queued; the outcome will be at `GET /v1/requests/{request_id}`.
pub(crate) fn accepted(request_id: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(RequestAccepted {
            request_id: request_id.to_owned(),
            status: DecisionStatus::Pending,
        }),
    )
        .into_response()
}
