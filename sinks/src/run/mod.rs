//! The sink: a main loop on the orders topic and one loop per retry tier.
//!
//! A batch the store refuses for a transient reason (unavailable, timeout)
//! does not block the partition: its events move to retry tier 1 and the
//! main loop goes on. Each tier holds messages until their `retry-at` time
//! (pausing just that partition, never sleeping in the loop), tries them
//! again, and passes failures on to the next tier; after the last tier, or
//! on a permanent failure, they go to the orders DLQ with headers that say
//! why.
//!
//! Ordering per order: an event for an order can overtake an earlier one
//! that waits in a retry tier. That is resolved by the store's monotonic
//! status rule rather than by parking: every event carries the whole order,
//! and a status only moves to a higher rank, so a late `reserved` arriving
//! after `paid` changes nothing and the order ends in the same state
//! whichever arrives first.

mod handler;
mod tiers;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use seckill_kafka::{next_batch, store_done};

use seckill_store::OrderStore;

use crate::SinkConfig;
use handler::Sink;

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
#[error("Kafka client error (is the broker at {brokers} running?): {source}")]
pub struct SinkStartError {
    brokers: String,
    source: rdkafka::error::KafkaError,
}

/// Runs one sink (main loop and retry tiers) until `cancel` fires; the
/// batch in hand is finished first.
pub async fn run(
    config: SinkConfig,
    store: Arc<dyn OrderStore>,
    cancel: CancellationToken,
) -> Result<(), SinkStartError> {
    let kafka_err = |source| SinkStartError {
        brokers: config.kafka.brokers.clone(),
        source,
    };
    let consumer = config
        .kafka
        .group_member(&config.group_id, &config.topics.orders, &cancel)
        .map_err(kafka_err)?;
    let producer = config.kafka.producer(0).map_err(kafka_err)?;
    let sink = Arc::new(Sink {
        store,
        producer,
        config: config.clone(),
        cancel: cancel.clone(),
    });
    let mut tiers = Vec::new();
    for tier in 1..=config.retry_delays_ms.len() {
        // A retry waits its tier's delay (seconds) anyway: its consumer
        // need not poll the broker every few milliseconds while idle.
        let tier_consumer = config
            .kafka
            .patient(RETRY_FETCH_WAIT_MS)
            .group_member(
                &config.topics.retry_group(tier),
                &config.topics.orders_retry(tier),
                &cancel,
            )
            .map_err(kafka_err)?;
        tiers.push(tokio::spawn(tiers::run(
            Arc::clone(&sink),
            tier,
            tier_consumer,
        )));
    }
    tokio::spawn(watch_dlq_backlog(
        sink.producer.clone(),
        config.clone(),
        cancel.clone(),
    ));
    tracing::info!(topic = %config.topics.orders, group = %config.group_id, tiers = tiers.len(), "sink started");
    let wait = Duration::from_millis(config.batch_max_ms);
    loop {
        let Some(batch) = next_batch(
            &consumer,
            config.batch_max,
            wait,
            &cancel,
            &config.topics.orders,
        )
        .await
        else {
            break;
        };
        let replays = batch
            .iter()
            .filter(|m| {
                seckill_kafka::header_str(m, seckill_kafka::headers::REPLAY_COUNT).is_some()
            })
            .count();
        if replays > 0 {
            crate::internal_events::replayed(replays);
        }
        if !sink.handle(&batch).await {
            tracing::warn!(
                batch = %describe(&batch),
                "stopped before the batch was stored; batch abandoned: its offsets stay \
                 unstored and it is redelivered (writes are idempotent)"
            );
            break;
        }
        store_done(&consumer, &batch);
    }
    // Every wait from here on is bounded: the tiers stop on their own (see
    // `until_stopped`), in parallel with the main loop's final commit and
    // close.
    let deadline = tokio::time::Instant::now() + TIERS_STOP;
    let join_tiers = async {
        for (i, mut t) in tiers.into_iter().enumerate() {
            match tokio::time::timeout_at(deadline, &mut t).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(tier = i + 1, error = %e, "retry tier task failed"),
                Err(_) => {
                    t.abort();
                    tracing::warn!(
                        tier = i + 1,
                        "retry tier did not stop in time; abandoned with the message it held \
                         (redelivered from the tier's last committed offset)"
                    );
                }
            }
        }
    };
    let stop_main = async {
        seckill_kafka::commit_on_stop(&consumer).await;
        seckill_kafka::close_on_stop("orders consumer", consumer).await;
    };
    tokio::join!(stop_main, join_tiers);
    seckill_kafka::close_on_stop("producer", sink).await;
    tracing::info!("sink stopped");
    Ok(())
}

/// How long a batch in hand may still take once stopped, before it is
/// abandoned.
/// How long the broker may hold a retry tier's fetch when nothing is due.
const RETRY_FETCH_WAIT_MS: u32 = 250;
const DRAIN_ON_STOP: Duration = Duration::from_secs(2);
/// How long the retry tiers get to stop (their drain, final commit and
/// close are bounded on their own; this bounds the sum).
const TIERS_STOP: Duration = Duration::from_secs(5);

/// Runs `work` to its end, or until [`DRAIN_ON_STOP`] after `cancel`
/// fired (`None`). A produce to an unreachable broker never resolves
/// (message.timeout.ms = 0), so every wait on one goes through here.
pub(super) async fn until_stopped<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = Option<T>>,
) -> Option<T> {
    tokio::select! {
        r = work => r,
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(DRAIN_ON_STOP).await;
        } => None,
    }
}

/// `topic[partition]@first..=last` of every partition in `batch`.
pub(super) fn describe(batch: &[rdkafka::message::OwnedMessage]) -> String {
    use rdkafka::message::Message;
    let mut ranges: std::collections::BTreeMap<(&str, i32), (i64, i64)> =
        std::collections::BTreeMap::new();
    for m in batch {
        let r = ranges
            .entry((m.topic(), m.partition()))
            .or_insert((m.offset(), m.offset()));
        *r = (r.0.min(m.offset()), r.1.max(m.offset()));
    }
    ranges
        .iter()
        .map(|((t, p), (lo, hi))| format!("{t}[{p}]@{lo}..={hi}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Keeps the DLQ backlog gauges current (the alert on a growing DLQ reads
/// them).
async fn watch_dlq_backlog(
    producer: rdkafka::producer::FutureProducer,
    config: SinkConfig,
    cancel: CancellationToken,
) {
    use rdkafka::producer::Producer;
    loop {
        for topic in [
            config.topics.orders_dlq.clone(),
            config.topics.requests_dlq.clone(),
        ] {
            let p = producer.clone();
            let t = topic.clone();
            if cancel.is_cancelled() {
                return;
            }
            // On a thread of its own rather than the blocking pool: with the
            // broker down each call waits for its timeout, and a blocking
            // task would hold up the runtime's shutdown.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let measure = move || {
                let md = p
                    .client()
                    .fetch_metadata(Some(&t), Duration::from_secs(5))
                    .ok()?;
                let mut n = 0;
                for part in md.topics().iter().flat_map(|x| x.partitions()) {
                    let (low, high) = p
                        .client()
                        .fetch_watermarks(&t, part.id(), Duration::from_secs(5))
                        .ok()?;
                    n += high - low;
                }
                Some(n)
            };
            let spawned = std::thread::Builder::new()
                .name("dlq-backlog".to_owned())
                .spawn(move || {
                    let _ = tx.send(measure());
                });
            if spawned.is_err() {
                continue;
            }
            let size = tokio::select! {
                _ = cancel.cancelled() => return,
                size = rx => size.ok().flatten(),
            };
            if let Some(n) = size {
                crate::internal_events::dlq_backlog(&topic, n);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
    }
}
