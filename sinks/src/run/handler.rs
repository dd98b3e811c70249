//! What happens to order events: stored, retried later, or dead-lettered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use seckill_kafka::{dead_letter, failure_headers, forward, retry_until, Backoff, ErrorClass};
use seckill_schemas::{now_ms, FulfilmentRequested, OrderEvent, OrderStatus, SCHEMA_VERSION};

use seckill_store::{OrderStore, StoreError};

use crate::{internal_events, SinkConfig};

pub(crate) struct Sink {
    pub(crate) store: Arc<dyn OrderStore>,
    pub(crate) producer: FutureProducer,
    pub(crate) config: SinkConfig,
    pub(crate) cancel: CancellationToken,
}

/// The one place that decides where a store failure goes: transient
/// failures to the next retry tier, the rest to the DLQ at once.
pub(crate) fn classify(error: &StoreError) -> ErrorClass {
    match error {
        StoreError::Unavailable(_) => ErrorClass::Transient,
        StoreError::Invalid(_) | StoreError::Url(_) => ErrorClass::Permanent,
    }
}

/// Reads an order event; an unreadable one is `unparseable`, a readable
/// but invalid one `permanent` (both go to the DLQ at once).
pub(crate) fn parse(message: &OwnedMessage) -> Result<OrderEvent, (ErrorClass, String)> {
    let payload = message
        .payload()
        .ok_or_else(|| (ErrorClass::Unparseable, "empty payload".to_owned()))?;
    let event = OrderEvent::from_json(payload).map_err(|e| {
        (
            ErrorClass::Unparseable,
            format!("invalid JSON order event: {e}"),
        )
    })?;
    event
        .validate()
        .map_err(|e| (ErrorClass::Permanent, format!("invalid order event: {e}")))?;
    Ok(event)
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

impl Sink {
    /// Handles one batch from the orders topic. Returns false only when
    /// stopped before the batch was done.
    pub(crate) async fn handle(&self, batch: &[OwnedMessage]) -> bool {
        let mut events = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        for m in batch {
            match parse(m) {
                Ok(e) => {
                    events.push(e);
                    messages.push(m);
                }
                Err((class, reason)) => {
                    if !self.fail(m, class, &reason, 0).await {
                        return false;
                    }
                }
            }
        }
        let started = Instant::now();
        match self.store.apply(&events).await {
            Ok(()) => {
                internal_events::applied(events.len(), started.elapsed().as_secs_f64());
                self.fulfil(&events).await
            }
            Err(e) => {
                let class = classify(&e);
                internal_events::write_failed(class.as_str(), &e);
                match class {
                    // The whole batch waits in tier 1; the partition moves on.
                    ErrorClass::Transient => {
                        for m in messages {
                            if !self.fail(m, class, &e.to_string(), 0).await {
                                return false;
                            }
                        }
                        true
                    }
                    // Find the event(s) the store refuses; store the rest.
                    _ => {
                        for (m, e) in messages.into_iter().zip(&events) {
                            if !self.apply_one(m, e, 0).await {
                                return false;
                            }
                        }
                        true
                    }
                }
            }
        }
    }

    /// Stores one event that came from `tier` (0 = the orders topic), or
    /// passes it on. Returns false only when stopped first.
    pub(crate) async fn apply_one(
        &self,
        message: &OwnedMessage,
        event: &OrderEvent,
        tier: usize,
    ) -> bool {
        match self.store.apply(std::slice::from_ref(event)).await {
            Ok(()) => self.fulfil(std::slice::from_ref(event)).await,
            Err(e) => {
                let class = classify(&e);
                internal_events::write_failed(class.as_str(), &e);
                self.fail(message, class, &e.to_string(), tier).await
            }
        }
    }

    /// Sends a failed message on: a transient failure to the tier after
    /// `tier`, or to the DLQ when there is none; anything else to the DLQ.
    pub(crate) async fn fail(
        &self,
        message: &OwnedMessage,
        class: ErrorClass,
        error: &str,
        tier: usize,
    ) -> bool {
        let next = tier + 1;
        let delays = &self.config.retry_delays_ms;
        let target = if class == ErrorClass::Transient && next <= delays.len() {
            let due = now_ms() + delays[next - 1] as i64;
            Some((self.config.topics.orders_retry(next), due))
        } else {
            None
        };
        // A produce to an unreachable broker never resolves: once stopped,
        // the attempt in flight gets a short drain, then it is given up.
        let sending = retry_until(
            &self.cancel,
            Backoff::STEP,
            || async {
                match &target {
                    Some((topic, due)) => {
                        let headers = failure_headers(message, class, error, Some(*due));
                        forward(&self.producer, topic, message, headers).await
                    }
                    None => {
                        dead_letter(
                            &self.producer,
                            &self.config.topics.orders_dlq,
                            message,
                            class,
                            error,
                        )
                        .await
                    }
                }
            },
            |e| tracing::warn!(error = %e, "passing a failed order event on failed; retrying"),
        );
        let sent = super::until_stopped(&self.cancel, sending).await;
        if sent.is_none() {
            return false;
        }
        match &target {
            Some(_) => internal_events::retried(next),
            None => internal_events::dead_lettered(
                class.as_str(),
                error,
                message.partition(),
                message.offset(),
            ),
        }
        true
    }

    /// Publishes one fulfilment event per paid order or free prize in
    /// `events`, once the store holds them. A replay publishes again;
    /// consumers de-duplicate on the order id (the key).
    pub(crate) async fn fulfil(&self, events: &[OrderEvent]) -> bool {
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
        for (order_id, payload) in &wanted {
            // Bounded once stopped, like the sends of `fail`.
            let sending = retry_until(
                &self.cancel,
                Backoff::STEP,
                || {
                    let record = FutureRecord::to(&self.config.topics.fulfilment)
                        .key(order_id.as_str())
                        .payload(payload.as_slice());
                    self.producer.send(record, Duration::from_secs(5))
                },
                |(e, _)| tracing::warn!(error = %e, "publishing a fulfilment event failed; retrying"),
            );
            let sent = super::until_stopped(&self.cancel, sending).await;
            if sent.is_none() {
                return false;
            }
        }
        internal_events::fulfilments(wanted.len());
        true
    }
}
