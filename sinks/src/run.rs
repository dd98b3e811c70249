//! The sink loop: batch in, one store transaction, offsets stored after it
//! commits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use seckill_schemas::runtime::{dead_letter, recv_batch, store_done};
use seckill_schemas::{FulfilmentRequested, OrderEvent, OrderStatus, SCHEMA_VERSION};

use crate::{internal_events, OrderStore, SinkConfig, StoreError};

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
#[error("Kafka client error (is the broker at {brokers} running?): {source}")]
pub struct SinkStartError {
    brokers: String,
    source: rdkafka::error::KafkaError,
}

/// Runs one sink until `cancel` fires; the batch in hand is finished first.
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
        .group_consumer(&config.group_id)
        .map_err(kafka_err)?;
    consumer
        .subscribe(&[config.topics.orders.as_str()])
        .map_err(kafka_err)?;
    let producer = config.kafka.producer(0).map_err(kafka_err)?;
    let sink = Sink {
        store,
        producer,
        config: config.clone(),
        cancel: cancel.clone(),
    };
    tracing::info!(topic = %config.topics.orders, group = %config.group_id, "sink started");
    let wait = Duration::from_millis(config.batch_max_ms);
    loop {
        let batch = match recv_batch(&consumer, config.batch_max, wait, &cancel).await {
            Ok(b) if b.is_empty() => break,
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the orders topic failed; retrying");
                if pause(&cancel, Duration::from_millis(200)).await {
                    break;
                }
                continue;
            }
        };
        if !sink.handle(&batch).await {
            break;
        }
        store_done(&consumer, &batch);
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!(error = %e, "final offset commit failed; the last batch will be redelivered");
    }
    tracing::info!("sink stopped");
    Ok(())
}

async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

struct Sink {
    store: Arc<dyn OrderStore>,
    producer: FutureProducer,
    config: SinkConfig,
    cancel: CancellationToken,
}

/// The delivery an event asks for: a payment, or a free prize won.
fn fulfilment(event: &OrderEvent) -> Option<FulfilmentRequested> {
    let (status, r) = event.order_state()?;
    if status != OrderStatus::Paid {
        return None;
    }
    Some(FulfilmentRequested {
        schema_version: SCHEMA_VERSION,
        order_id: r.order_id.to_owned(),
        campaign_id: r.campaign_id.to_owned(),
        user_id: r.user_id.to_owned(),
        prize_id: r.prize_id.map(str::to_owned),
        item_name: r.item_name.to_owned(),
        award_type: r.award_type,
        quantity: r.quantity,
        price: r.price,
        paid_at_ms: r.changed_at_ms,
    })
}

fn parse(message: &OwnedMessage) -> Result<OrderEvent, String> {
    let payload = message.payload().ok_or("empty payload")?;
    serde_json::from_slice(payload).map_err(|e| format!("invalid JSON order event: {e}"))
}

impl Sink {
    /// Stores one batch; returns false only when stopped before it was done.
    async fn handle(&self, batch: &[OwnedMessage]) -> bool {
        let mut events = Vec::with_capacity(batch.len());
        for m in batch {
            match parse(m) {
                Ok(e) => events.push(e),
                Err(reason) => {
                    if !self.dead_letter(m, "unparseable", &reason).await {
                        return false;
                    }
                }
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = Instant::now();
            match self.store.apply(&events).await {
                Ok(()) => {
                    internal_events::applied(events.len(), started.elapsed().as_secs_f64());
                    return self.fulfil(&events).await;
                }
                Err(e) if e.is_transient() => internal_events::write_failed("transient", &e),
                Err(e) => {
                    // One bad event must not hold the batch back: store the
                    // events one by one and dead-letter the ones refused.
                    internal_events::write_failed("permanent", &e);
                    return self.apply_one_by_one(batch).await;
                }
            }
            if pause(&self.cancel, backoff).await {
                return false;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Publishes one fulfilment event per paid order or free prize in
    /// `events`, once the store holds them. A replay publishes again;
    /// consumers de-duplicate on the order id (the key).
    async fn fulfil(&self, events: &[OrderEvent]) -> bool {
        let wanted: Vec<(String, Vec<u8>)> = events
            .iter()
            .filter_map(fulfilment)
            .map(|f| {
                (
                    f.order_id.clone(),
                    serde_json::to_vec(&f).unwrap_or_default(),
                )
            })
            .collect();
        let mut backoff = Duration::from_millis(50);
        for (order_id, payload) in &wanted {
            loop {
                let record = FutureRecord::to(&self.config.topics.fulfilment)
                    .key(order_id.as_str())
                    .payload(payload.as_slice());
                match self.producer.send(record, Duration::from_secs(5)).await {
                    Ok(_) => break,
                    Err((e, _)) => {
                        tracing::warn!(error = %e, "publishing a fulfilment event failed; retrying")
                    }
                }
                if pause(&self.cancel, backoff).await {
                    return false;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        internal_events::fulfilments(wanted.len());
        true
    }

    async fn apply_one_by_one(&self, batch: &[OwnedMessage]) -> bool {
        for m in batch {
            let Ok(event) = parse(m) else { continue };
            let mut backoff = Duration::from_millis(50);
            loop {
                match self.store.apply(std::slice::from_ref(&event)).await {
                    Ok(()) => {
                        if !self.fulfil(std::slice::from_ref(&event)).await {
                            return false;
                        }
                        break;
                    }
                    Err(e @ StoreError::Unavailable(_)) => {
                        internal_events::write_failed("transient", &e)
                    }
                    Err(e) => {
                        if !self.dead_letter(m, "permanent", &e.to_string()).await {
                            return false;
                        }
                        break;
                    }
                }
                if pause(&self.cancel, backoff).await {
                    return false;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        true
    }

    async fn dead_letter(&self, m: &OwnedMessage, class: &str, reason: &str) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            match dead_letter(
                &self.producer,
                &self.config.topics.orders_dlq,
                m,
                class,
                reason,
            )
            .await
            {
                Ok(()) => {
                    internal_events::dead_lettered(class, reason, m.partition(), m.offset());
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "publishing to the orders DLQ failed; retrying")
                }
            }
            if pause(&self.cancel, backoff).await {
                return false;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
