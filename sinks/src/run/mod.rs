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
        let tier_consumer = config
            .kafka
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
            break;
        }
        store_done(&consumer, &batch);
    }
    seckill_kafka::commit_on_stop(&consumer);
    for t in tiers {
        let _ = t.await;
    }
    tracing::info!("sink stopped");
    Ok(())
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
            let size = tokio::task::spawn_blocking(move || {
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
            })
            .await
            .ok()
            .flatten();
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
