//! Putting a request on the requests topic, and waiting for its outcome.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::producer::FutureRecord;
use seckill_schemas::{DecisionStatus, QueuePlace, RequestAccepted, RequestEvent};
use tokio::sync::oneshot;

use crate::internal_events;
use crate::listener::Wakeup;
use crate::position::Placed;
use crate::problem::Problem;
use crate::state::App;

/// Produces `event` keyed by its campaign and waits for the broker's
/// acknowledgement. Without one the request's fate is unknown, and the
/// client is told so (503 with the request id), never told it failed.
/// A command goes out signed with the command key (purchases need none).
/// It goes to stock bucket `bucket` of the event's campaign: keyed
/// `<campaign>#<bucket>` (the campaign id for bucket 0), a command signed
/// for that bucket (see [`super::buckets`]).
/// Returns where the request went; a purchase's position is handed to the
/// positions writer, for its place in line (it does not wait for it).
pub(crate) async fn enqueue(
    app: &App,
    event: &RequestEvent,
    bucket: u32,
) -> Result<Placed, Problem> {
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
        Ok(delivery) => {
            internal_events::produced(started.elapsed().as_secs_f64());
            let placed = Placed {
                partition: delivery.partition,
                offset: delivery.offset,
            };
            // Only a purchase: its result names its buyer, who may see its
            // place; a command's result is the admin's (or the payment
            // service's), and its sender gets its place from a `wait_ms`
            // that runs out.
            if let RequestEvent::PurchaseRequested(p) = event {
                app.line.record(&p.request_id, &p.user_id, placed);
            }
            Ok(placed)
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
    Ok(submit_placed(app, event, wait, pick, check).await?.0)
}

/// [`submit`], also saying where the request went.
pub(crate) async fn submit_placed<T, F, Fut>(
    app: &App,
    event: &RequestEvent,
    wait: Option<Duration>,
    pick: impl Fn(Wakeup) -> Option<T>,
    check: F,
) -> Result<(Option<T>, Placed), Problem>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let bucket = super::buckets::route(app, event);
    submit_in(app, event, bucket, wait, pick, check).await
}

/// [`submit_placed`] to stock bucket `bucket` of the event's campaign.
pub(crate) async fn submit_in<T, F, Fut>(
    app: &App,
    event: &RequestEvent,
    bucket: u32,
    wait: Option<Duration>,
    pick: impl Fn(Wakeup) -> Option<T>,
    check: F,
) -> Result<(Option<T>, Placed), Problem>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let request_id = event.request_id();
    // Registered before the produce, so an outcome that comes back at once
    // is not missed.
    let rx = wait.map(|_| app.waiters.register(request_id));
    let placed = match enqueue(app, event, bucket).await {
        Ok(placed) => placed,
        Err(p) => {
            app.waiters.forget(request_id);
            return Err(p);
        }
    };
    match (rx, wait) {
        (Some(rx), Some(wait)) => Ok((
            wait_for(app, request_id, rx, wait, pick, check).await,
            placed,
        )),
        _ => Ok((None, placed)),
    }
}

/// 202: queued; the outcome will be at `GET /v1/requests/{request_id}`.
/// Said at once, without a look at the line (no Redis call on this path).
pub(crate) fn accepted(request_id: &str) -> Response {
    pending(request_id, None)
}

/// 202 for a request whose `wait_ms` ran out: queued, and where it stands
/// in line now (told to its sender, who may see it). Without Redis the
/// answer is the same, without the place.
pub(crate) async fn waited_out(app: &App, request_id: &str, placed: Placed) -> Response {
    let mut con = app.redis.clone();
    let queue = match app.line.place(&mut con, placed).await {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::debug!(error = %e, "could not read the processors' progress");
            None
        }
    };
    pending(request_id, queue)
}

fn pending(request_id: &str, queue: Option<QueuePlace>) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(RequestAccepted {
            request_id: request_id.to_owned(),
            status: DecisionStatus::Pending,
            queue,
        }),
    )
        .into_response()
}
