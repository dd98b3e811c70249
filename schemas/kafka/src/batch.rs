//! Reading batches and keeping offsets: offsets are stored only once the
//! work for them is done (at-least-once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::KafkaConsumer;

/// The most messages a batch reserves room for when its first arrives.
const MAX_PREALLOCATED: usize = 16_384;

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
    // A record the resume guard holds back (see crate::resume) is read
    // again later, or was before the committed offset.
    let guard = &consumer.context().resume;
    if guard.armed() {
        guard.check_idle(consumer);
    }
    loop {
        let m = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(batch),
            m = consumer.recv() => m?,
            _ = tokio::time::sleep(crate::resume::IDLE_AFTER), if guard.armed() => {
                guard.check_idle(consumer);
                continue;
            }
        };
        if guard.admit(consumer, &m) {
            // Room for a full batch once one starts: growing it by
            // doubling copied it a dozen times per batch, into fresh pages
            // the kernel zeroed.
            batch.reserve(max.clamp(1, MAX_PREALLOCATED));
            batch.push(m.detach());
            break;
        }
    }
    let deadline = tokio::time::sleep(max_wait);
    tokio::pin!(deadline);
    while batch.len() < max {
        tokio::select! {
            biased;
            m = consumer.recv() => {
                let m = m?;
                if guard.admit(consumer, &m) {
                    batch.push(m.detach());
                }
            }
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

/// How long [`commit_on_stop`] waits for the broker.
pub(crate) const COMMIT_ON_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Commits the stored offsets once more as a role stops, waiting at most
/// [`COMMIT_ON_STOP_TIMEOUT`]. Nothing stored since the last commit is not
/// a failure; any other failure (or a broker that does not answer in time)
/// only means that the messages after the last committed offsets of the
/// partitions logged are redelivered to their next owner, which the
/// idempotent work absorbs. Returns whether the commit went through.
///
/// The synchronous commit runs on a thread of its own: with the broker
/// unreachable librdkafka can block it for its socket timeout, and a
/// thread of the runtime's blocking pool would hold up the runtime's
/// shutdown until then. A commit that outlives the wait is left to finish
/// (or to die with the process).
pub async fn commit_on_stop(consumer: &Arc<KafkaConsumer>) -> bool {
    let partitions = || {
        consumer
            .assignment()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| format!("{}[{}]", e.topic(), e.partition()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let c = Arc::clone(consumer);
    let spawned = std::thread::Builder::new()
        .name("final-commit".to_owned())
        .spawn(move || {
            let _ = tx.send(c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, partitions = %partitions(), "no thread for the final offset commit; the messages after the last commit are redelivered");
        return false;
    }
    match tokio::time::timeout(COMMIT_ON_STOP_TIMEOUT, rx).await {
        Ok(Ok(Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)))) => true,
        Ok(Ok(Err(e))) => {
            tracing::warn!(
                error = %e,
                partitions = %partitions(),
                "final offset commit failed; the messages of these partitions after their last \
                 committed offset will be redelivered"
            );
            false
        }
        Ok(Err(_)) => {
            tracing::warn!(partitions = %partitions(), "final offset commit ended without an answer; the messages after the last commit are redelivered");
            false
        }
        Err(_) => {
            tracing::warn!(
                partitions = %partitions(),
                timeout_ms = COMMIT_ON_STOP_TIMEOUT.as_millis() as u64,
                "final offset commit not answered in time (broker unreachable?); abandoned: the \
                 messages of these partitions after their last committed offset will be redelivered"
            );
            false
        }
    }
}
