//! The load: purchase requests sent over HTTP or straight to the requests
//! topic, open loop (request i is due at start + i/rate and is sent then,
//! whatever the earlier ones are doing) or closed loop (`--concurrency`
//! requests in flight, the next sent when one is answered).
//!
//! Every latency is measured from the request's intended send time: its
//! due time in an open loop (so a stall of the system under test shows up
//! in the latency of every request that was due during it, instead of
//! holding those requests back: no coordinated omission), its actual send
//! time in a closed loop.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::stream::{self, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::task::JoinHandle;

use seckill_schemas::{Decision, DecisionStatus, PurchaseRequested, RequestEvent, SCHEMA_VERSION};

use super::report::Latency;

/// When request `i` of an open loop at `rate` requests/s is due, after the
/// start of the load: i / rate.
pub(super) fn due_after_start(i: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// How many requests an open loop at `rate`/s for `secs` seconds sends:
/// every request due before `secs` (rate × secs, rounded up).
pub(super) fn open_loop_requests(rate: f64, secs: f64) -> usize {
    (rate * secs).ceil() as usize
}

/// The start of a load on both clocks: the monotonic one the bench times
/// with, and the wall clock the orders topic's timestamps are on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub(super) start: Instant,
    start_wall_us: i64,
}

impl Clock {
    pub(super) fn now() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Clock {
            start: Instant::now(),
            start_wall_us: wall,
        }
    }

    /// `at` on the wall clock, microseconds since the epoch.
    pub(super) fn wall_us(&self, at: Instant) -> i64 {
        let since = at.saturating_duration_since(self.start).as_micros();
        self.start_wall_us + i64::try_from(since).unwrap_or(i64::MAX / 2)
    }
}

/// How one request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Queued for the processors (HTTP 202, or acknowledged by the broker).
    Accepted,
    /// Answered with a final decision (HTTP 200): by ingest's fast path, or
    /// with `--wait-ms` by the processors while the buyer waited.
    Fast,
    /// Refused (429, 503, any other status or an unreadable answer; or not
    /// acknowledged by the broker).
    Refused,
    /// No answer at all (connection refused, reset, timed out).
    Unanswered,
}

/// One request of the load.
#[derive(Debug)]
pub(super) struct Sent {
    /// The request id: ingest's (HTTP 202) or the bench's own (Kafka).
    pub(super) rid: Option<String>,
    /// The intended send time, wall clock, microseconds since the epoch.
    pub(super) intended_wall_us: i64,
    pub(super) outcome: Outcome,
    /// From the intended send time to the answer (HTTP) or the broker's
    /// acknowledgement (Kafka); `None` without one.
    pub(super) answered_after: Option<Duration>,
}

/// What the load did.
pub(super) struct Loaded {
    pub(super) sent: Vec<Sent>,
    /// Requests of an open loop that found `--max-in-flight` requests
    /// unanswered at their due time and waited for one to finish (their
    /// latency still counts from the due time). `None` in a closed loop.
    pub(super) late_sends: Option<usize>,
    /// How long after its due time each request of an open loop was sent
    /// (the generator's own lag: waits for the cap, a busy CPU).
    pub(super) send_lag: Latency,
    pub(super) clock: Clock,
    /// From the start of the load to its last answer.
    pub(super) secs: f64,
}

/// Where the requests go.
pub(super) enum Sender {
    Http {
        client: reqwest::Client,
        /// `<base>/v1/purchases`.
        url: String,
        /// The bearer token of each user, or none: `X-User-Id` only.
        tokens: std::collections::HashMap<String, String>,
    },
    Kafka {
        producer: FutureProducer,
        topic: String,
        /// Stock buckets of every campaign (1: none): a purchase is keyed
        /// by its user's bucket, as an upstream producer should key it.
        buckets: u32,
    },
}

impl Sender {
    /// Sends one request now and returns the task that waits for its
    /// answer (holding `permit` until then).
    async fn send(
        &self,
        campaign: &str,
        user: &str,
        intended: Instant,
        intended_wall_us: i64,
        permit: OwnedSemaphorePermit,
    ) -> anyhow::Result<JoinHandle<Sent>> {
        match self {
            Sender::Http {
                client,
                url,
                tokens,
            } => {
                let req = purchase(client, url, tokens, campaign, user);
                Ok(tokio::spawn(async move {
                    let (outcome, rid) = post(req).await;
                    let answered = Instant::now();
                    drop(permit);
                    Sent {
                        rid,
                        intended_wall_us,
                        answered_after: (outcome != Outcome::Unanswered)
                            .then(|| answered.saturating_duration_since(intended)),
                        outcome,
                    }
                }))
            }
            Sender::Kafka {
                producer,
                topic,
                buckets,
            } => {
                let rid = uuid::Uuid::new_v4().to_string();
                let event = RequestEvent::PurchaseRequested(PurchaseRequested {
                    schema_version: SCHEMA_VERSION,
                    request_id: rid.clone(),
                    campaign_id: campaign.to_owned(),
                    user_id: user.to_owned(),
                    quantity: 1,
                    requested_at_ms: Some(intended_wall_us / 1000),
                    attributes: None,
                });
                let payload = serde_json::to_vec(&event)?;
                let key = seckill_schemas::bucket_key(
                    campaign,
                    seckill_schemas::bucket_of(user, *buckets),
                );
                let mut record = FutureRecord::to(topic).key(key.as_str()).payload(&payload);
                // A full producer queue holds the generator back: that
                // shows as send lag, and in the latency from the due time.
                let delivery = loop {
                    match producer.send_result(record) {
                        Ok(f) => break f,
                        Err((_, r)) => {
                            record = r;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                };
                Ok(tokio::spawn(async move {
                    let acked = matches!(delivery.await, Ok(Ok(_)));
                    let answered = Instant::now();
                    drop(permit);
                    Sent {
                        rid: acked.then_some(rid),
                        intended_wall_us,
                        outcome: if acked {
                            Outcome::Accepted
                        } else {
                            Outcome::Refused
                        },
                        answered_after: Some(answered.saturating_duration_since(intended)),
                    }
                }))
            }
        }
    }
}

fn purchase(
    client: &reqwest::Client,
    url: &str,
    tokens: &std::collections::HashMap<String, String>,
    campaign: &str,
    user: &str,
) -> reqwest::RequestBuilder {
    let req = client.post(url).json(&json!({ "campaign_id": campaign }));
    match tokens.get(user) {
        Some(t) => req.bearer_auth(t),
        None => req.header("x-user-id", user),
    }
}

/// Sends one purchase and reads its answer: the outcome, and the request
/// id of a queued one.
async fn post(req: reqwest::RequestBuilder) -> (Outcome, Option<String>) {
    let Ok(resp) = req.send().await else {
        return (Outcome::Unanswered, None);
    };
    let status = resp.status().as_u16();
    let Ok(body) = resp.json::<serde_json::Value>().await else {
        return (Outcome::Refused, None);
    };
    let rid = body
        .get("request_id")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    match (status, rid) {
        (202, Some(rid)) => (Outcome::Accepted, Some(rid)),
        (200, _) => match serde_json::from_value::<Decision>(body) {
            Ok(d) if d.status != DecisionStatus::Pending => (Outcome::Fast, None),
            _ => (Outcome::Refused, None),
        },
        _ => (Outcome::Refused, None),
    }
}

/// Sends `plan` through `sender`: at `rate`/s from the start (open loop,
/// at most `max_in_flight` unanswered), or, without a rate, each as soon
/// as the one before it is handed over (Kafka's closed loop: the producer
/// queue is the only bound).
pub(super) async fn paced(
    sender: &Sender,
    plan: &[(String, String)],
    rate: Option<f64>,
    max_in_flight: usize,
) -> anyhow::Result<Loaded> {
    let cap = match rate {
        Some(_) => max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
        None => Semaphore::MAX_PERMITS,
    };
    let in_flight = Arc::new(Semaphore::new(cap));
    let mut late = 0;
    let mut send_lag = Latency::new();
    let mut handles = Vec::with_capacity(plan.len());
    let clock = Clock::now();
    for (i, (campaign, user)) in plan.iter().enumerate() {
        let intended = match rate {
            Some(rate) => {
                let due = clock.start + due_after_start(i, rate);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                due
            }
            None => Instant::now(),
        };
        let permit = match Arc::clone(&in_flight).try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => {
                late += 1;
                Arc::clone(&in_flight)
                    .acquire_owned()
                    .await
                    .context("the in-flight limit was closed")?
            }
            Err(TryAcquireError::Closed) => anyhow::bail!("the in-flight limit was closed"),
        };
        if rate.is_some() {
            send_lag.record(Instant::now().saturating_duration_since(intended));
        }
        let wall = clock.wall_us(intended);
        handles.push(sender.send(campaign, user, intended, wall, permit).await?);
    }
    let mut sent = Vec::with_capacity(handles.len());
    for h in handles {
        sent.push(h.await.context("a request task panicked")?);
    }
    Ok(Loaded {
        sent,
        late_sends: rate.map(|_| late),
        send_lag,
        clock,
        secs: clock.start.elapsed().as_secs_f64(),
    })
}

/// The closed loop over HTTP: `concurrency` requests in flight, each
/// timed from its own send.
pub(super) async fn closed_http(
    sender: &Sender,
    plan: &[(String, String)],
    concurrency: usize,
) -> anyhow::Result<Loaded> {
    let Sender::Http {
        client,
        url,
        tokens,
    } = sender
    else {
        anyhow::bail!("the closed HTTP loop needs an HTTP sender");
    };
    let clock = Clock::now();
    let sent: Vec<Sent> = stream::iter(plan)
        .map(|(campaign, user)| {
            let req = purchase(client, url, tokens, campaign, user);
            async move {
                let at = Instant::now();
                let (outcome, rid) = post(req).await;
                Sent {
                    rid,
                    intended_wall_us: clock.wall_us(at),
                    answered_after: (outcome != Outcome::Unanswered).then(|| at.elapsed()),
                    outcome,
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    Ok(Loaded {
        sent,
        late_sends: None,
        send_lag: Latency::new(),
        clock,
        secs: clock.start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_i_is_due_at_i_over_rate() {
        assert_eq!(due_after_start(0, 200.0), Duration::ZERO);
        assert_eq!(due_after_start(1, 200.0), Duration::from_millis(5));
        assert_eq!(due_after_start(200, 200.0), Duration::from_secs(1));
        assert_eq!(due_after_start(3, 2000.0), Duration::from_micros(1500));
        // A fractional rate: one every 2 s.
        assert_eq!(due_after_start(3, 0.5), Duration::from_secs(6));
        // Evenly spaced, whatever happened before: the schedule does not
        // depend on answers.
        let gaps: Vec<Duration> = (1..1000)
            .map(|i| due_after_start(i, 2000.0) - due_after_start(i - 1, 2000.0))
            .collect();
        assert!(gaps
            .iter()
            .all(|g| g.abs_diff(Duration::from_micros(500)) < Duration::from_micros(1)));
    }

    #[test]
    fn an_open_loop_sends_every_request_due_within_its_duration() {
        assert_eq!(open_loop_requests(200.0, 3.0), 600);
        assert_eq!(open_loop_requests(2000.0, 10.0), 20_000);
        assert_eq!(open_loop_requests(0.5, 3.0), 2);
        assert_eq!(open_loop_requests(3.0, 0.5), 2);
        // The last one is due before the duration ends.
        let n = open_loop_requests(200.0, 3.0);
        assert!(due_after_start(n - 1, 200.0) < Duration::from_secs(3));
        assert!(due_after_start(n, 200.0) >= Duration::from_secs(3));
    }

    #[test]
    fn the_clock_maps_instants_to_wall_microseconds() {
        let c = Clock::now();
        let later = c.start + Duration::from_millis(1500);
        assert_eq!(c.wall_us(later) - c.wall_us(c.start), 1_500_000);
        let wall_now_ms = seckill_schemas::now_ms();
        assert!((c.wall_us(c.start) / 1000 - wall_now_ms).abs() < 1000);
    }
}
