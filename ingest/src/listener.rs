//! Wakes requests that wait for their decision (`?wait_ms=`). Every ingest
//! instance reads the whole orders topic from its end, without a group, so
//! whichever instance holds the waiter sees the decision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use seckill_kafka::KafkaSettings;
use seckill_schemas::{CampaignApplied, Decision, OrderCommandResult, OrderEvent, OrderStatus};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// What a waiter is woken with.
#[derive(Debug, Clone)]
pub(crate) enum Wakeup {
    Decision(Decision),
    Campaign(CampaignApplied),
    Order(OrderCommandResult),
}

/// Request id -> the callers waiting for it.
#[derive(Default)]
pub(crate) struct Waiters {
    // A std Mutex: held for a map operation only, never across an await.
    map: Mutex<HashMap<String, Vec<oneshot::Sender<Wakeup>>>>,
}

impl Waiters {
    pub(crate) fn register(&self, request_id: &str) -> oneshot::Receiver<Wakeup> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(request_id.to_owned()).or_default().push(tx);
        rx
    }

    /// Drops the entry of a caller that stopped waiting.
    pub(crate) fn forget(&self, request_id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(request_id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(request_id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn wake(&self, request_id: &str, wakeup: Wakeup) {
        let list = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(request_id);
        for tx in list.into_iter().flatten() {
            let _ = tx.send(wakeup.clone());
        }
    }
}

/// Starts reading the orders topic from its end. Returns once the
/// partitions are assigned.
pub(crate) fn spawn(
    kafka: &KafkaSettings,
    topic: &str,
    waiters: Arc<Waiters>,
    cancel: CancellationToken,
) -> Result<(), rdkafka::error::KafkaError> {
    let group = format!("seckill-ingest-listener-{}", uuid::Uuid::new_v4());
    let consumer = kafka.plain_consumer(&group)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::End)?;
        }
    }
    consumer.assign(&tpl)?;
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = cancel.cancelled() => break,
                m = consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "decision listener read failed");
                    continue;
                }
            };
            if waiters.is_empty() {
                continue;
            }
            let Some(Ok(event)) = message.payload().map(OrderEvent::from_json) else {
                continue;
            };
            let wakeup = match &event {
                OrderEvent::CampaignApplied(a) => Wakeup::Campaign(a.clone()),
                OrderEvent::Paid(c) | OrderEvent::Cancelled(c) => {
                    Wakeup::Order(OrderCommandResult {
                        request_id: c.request_id.clone(),
                        order_id: c.order_id.clone(),
                        accepted: true,
                        status: event.order_state().map(|(s, _)| s),
                        reason: None,
                    })
                }
                OrderEvent::OrderCommandRejected(r) => Wakeup::Order(OrderCommandResult {
                    request_id: r.request_id.clone(),
                    order_id: r.order_id.clone(),
                    accepted: false,
                    status: OrderStatus::after_refusal(r.reason),
                    reason: Some(r.reason),
                }),
                // An expiry caused by a late pay is followed by the pay's
                // refusal, which is what its caller waits for.
                OrderEvent::Expired(_) => continue,
                other => match other.decision() {
                    Some(d) => Wakeup::Decision(d),
                    None => continue,
                },
            };
            waiters.wake(event.request_id(), wakeup);
        }
    });
    Ok(())
}
