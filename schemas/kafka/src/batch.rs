//! Reading batches and keeping offsets: offsets are stored only once the
//! work for them is done (at-least-once).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::KafkaConsumer;

/// Reads up to `max` messages: waits for the first one as long as it takes
/// (or until `cancel`), then at most `max_wait` for the rest. Returns an
/// empty batch only when cancelled.
pub async fn recv_batch(
    consumer: &KafkaConsumer,
    max: usize,
    max_wait: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<OwnedMessage>, KafkaError> {
    let mut batch = Vec::new();
    let first = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(batch),
        m = consumer.recv() => m?,
    };
    batch.push(first.detach());
    let deadline = tokio::time::sleep(max_wait);
    tokio::pin!(deadline);
    while batch.len() < max {
        tokio::select! {
            biased;
            m = consumer.recv() => batch.push(m?.detach()),
            _ = &mut deadline => break,
        }
    }
    Ok(batch)
}

/// The next batch for a role's main loop: like [`recv_batch`], but a read
/// error is logged and retried after a pause. `None` once `cancel` fires.
pub async fn next_batch(
    consumer: &KafkaConsumer,
    max: usize,
    max_wait: Duration,
    cancel: &CancellationToken,
    topic: &str,
) -> Option<Vec<OwnedMessage>> {
    loop {
        match recv_batch(consumer, max, max_wait, cancel).await {
            Ok(b) if b.is_empty() => return None,
            Ok(b) => return Some(b),
            Err(e) => {
                tracing::warn!(topic, error = %e, "reading failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// The offsets to resume from after `messages` are done: the highest offset
/// + 1 of each partition.
pub fn next_offsets(messages: &[OwnedMessage]) -> TopicPartitionList {
    let mut highest: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in messages {
        let entry = highest
            .entry((m.topic(), m.partition()))
            .or_insert(m.offset());
        *entry = (*entry).max(m.offset());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in highest {
        // Adding to a fresh list cannot fail for a valid offset.
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1));
    }
    tpl
}

/// Stores the offsets after `messages`. A partition revoked in a rebalance
/// refuses its store; its new owner redelivers, which the idempotent work
/// absorbs, so that is logged, not fatal.
pub fn store_done(consumer: &KafkaConsumer, messages: &[OwnedMessage]) {
    if messages.is_empty() {
        return;
    }
    if let Err(e) = consumer.store_offsets(&next_offsets(messages)) {
        tracing::warn!(error = %e, "offsets not stored (partition revoked?); they will be redelivered");
    }
}

/// Commits the stored offsets once more as a role stops. Nothing stored
/// since the last commit is not a failure; any other failure only means
/// the last batch is redelivered to the partition's next owner.
pub fn commit_on_stop(consumer: &KafkaConsumer) {
    match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "final offset commit failed; the last batch will be redelivered")
        }
    }
}
