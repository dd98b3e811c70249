//! One retry tier: holds each message until its `retry-at` time by pausing
//! its partition (other partitions keep flowing), then tries it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use seckill_kafka::KafkaConsumer;

use seckill_kafka::{header_i64, headers, store_done};
use seckill_schemas::now_ms;

use super::handler::{parse, Sink};

fn one(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

pub(super) async fn run(sink: Arc<Sink>, tier: usize, consumer: Arc<KafkaConsumer>) {
    // (topic, partition) -> when its held message is due (unix ms).
    let mut held: HashMap<(String, i32), i64> = HashMap::new();
    loop {
        let next_due = held.values().min().copied();
        let wake = async {
            match next_due {
                Some(due) => {
                    let wait = (due - now_ms()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            _ = sink.cancel.cancelled() => break,
            _ = wake => {
                let now = now_ms();
                held.retain(|(topic, partition), due| {
                    if *due > now {
                        return true;
                    }
                    if let Err(e) = consumer.resume(&one(topic, *partition)) {
                        tracing::debug!(error = %e, "resume failed (partition revoked?)");
                    }
                    false
                });
                continue;
            }
            m = consumer.recv() => m,
        };
        let message: OwnedMessage = match message {
            Ok(m) => m.detach(),
            Err(e) => {
                tracing::warn!(tier, error = %e, "reading a retry tier failed");
                continue;
            }
        };
        let key = (message.topic().to_owned(), message.partition());
        if held.contains_key(&key) {
            // Fetched before the pause took effect; the seek below makes the
            // partition deliver it again once resumed.
            continue;
        }
        let due = header_i64(&message, headers::RETRY_AT).unwrap_or(0);
        if due > now_ms() {
            let tp = one(&key.0, key.1);
            let held_ok = consumer.pause(&tp).is_ok()
                && consumer
                    .seek(
                        &key.0,
                        key.1,
                        Offset::Offset(message.offset()),
                        Duration::from_secs(5),
                    )
                    .is_ok();
            if held_ok {
                held.insert(key, due);
                continue;
            }
            // Could not hold it (rebalance in progress): the failure it had
            // is still the last word, so retry it now rather than lose time.
        }
        let done = match parse(&message) {
            Ok(event) => sink.apply_one(&message, &event, tier).await,
            Err((class, reason)) => sink.fail(&message, class, &reason, tier).await,
        };
        if !done {
            tracing::warn!(
                tier,
                message = %super::describe(std::slice::from_ref(&message)),
                "stopped before the retried event was handled; abandoned: its offset stays \
                 unstored and it is redelivered"
            );
            break;
        }
        store_done(&consumer, std::slice::from_ref(&message));
    }
    if !held.is_empty() {
        tracing::info!(
            tier,
            partitions = held.len(),
            "stopping with held messages; they are redelivered to the tier's next owner"
        );
    }
    seckill_kafka::commit_on_stop(&consumer).await;
    seckill_kafka::close_on_stop("retry tier consumer", consumer).await;
}
