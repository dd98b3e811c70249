//! The stall watch: whether the consumer groups downstream of a role keep
//! up with what was accepted. A group whose committed offset stays put on a
//! partition that holds messages past it, for longer than a set time, is
//! stalled: requests were accepted and nothing decides them (a broker that
//! lost the group, processors that are down or wedged). That is said once
//! in the log and kept for `/readyz` until the group moves again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::{KafkaConsumer, KafkaSettings};

static STALLED: std::sync::LazyLock<prometheus::IntGaugeVec> = std::sync::LazyLock::new(|| {
    prometheus::register_int_gauge_vec!(
        "seckill_group_stalled",
        "1 while a consumer group has made no progress on a partition with messages waiting \
         for longer than the stall time",
        &["group"]
    )
    .expect("metric registered once")
});

static LAG: std::sync::LazyLock<prometheus::IntGaugeVec> = std::sync::LazyLock::new(|| {
    prometheus::register_int_gauge_vec!(
        "seckill_group_lag",
        "Messages past a consumer group's committed offsets, all partitions together",
        &["group"]
    )
    .expect("metric registered once")
});

/// A group and the topic it consumes.
#[derive(Debug, Clone)]
pub struct Watched {
    pub group: String,
    pub topic: String,
    /// What stops while it stalls, for the log line ("accepted requests
    /// are not decided").
    pub consequence: String,
}

/// What the watch found last: one line per stalled group.
#[derive(Debug, Default, Clone)]
pub struct Stalls {
    inner: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Stalls {
    /// The stalled groups, each with what is stuck (empty: none).
    pub fn current(&self) -> Vec<String> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One partition's view between two looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    next: i64,
    high: i64,
    /// Since when `next` has not moved while `high > next`.
    stuck_since: Option<Instant>,
}

/// Per partition of `topic`: (partition, the group's next offset to read
/// (its committed offset, else the low watermark), high watermark), as
/// `consumer`'s group stands. Also what the group watchdog reads.
pub(crate) fn progress(
    consumer: &KafkaConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut wanted = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            wanted.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(wanted.clone(), timeout)?;
    let mut out = Vec::new();
    for e in wanted.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        let next = match committed
            .find_partition(topic, e.partition())
            .map(|c| c.offset())
        {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        out.push((e.partition(), next, high));
    }
    Ok(out)
}

/// Folds a new look into `seen`; returns the partitions stuck for at least
/// `after`, as (partition, messages waiting, stuck for).
fn fold(
    seen: &mut BTreeMap<i32, Seen>,
    now: Instant,
    look: &[(i32, i64, i64)],
    after: Duration,
) -> Vec<(i32, i64, Duration)> {
    let mut stuck = Vec::new();
    for &(p, next, high) in look {
        let before = seen.get(&p).copied();
        let stuck_since = if high <= next {
            None
        } else {
            match before {
                Some(b) if b.next == next => Some(b.stuck_since.unwrap_or(now)),
                // First look, or it moved: it counts from now.
                _ => Some(now),
            }
        };
        if let Some(since) = stuck_since {
            let for_ = now.saturating_duration_since(since);
            if for_ >= after {
                stuck.push((p, high - next, for_));
            }
        }
        seen.insert(
            p,
            Seen {
                next,
                high,
                stuck_since,
            },
        );
    }
    stuck
}

/// Watches `groups` until `cancel` fires, looking every `after / 4`.
pub fn watch_progress(
    settings: &KafkaSettings,
    groups: Vec<Watched>,
    after: Duration,
    cancel: CancellationToken,
) -> Result<Stalls, KafkaError> {
    let stalls = Stalls::default();
    for w in groups {
        // A consumer under the group's id that never joins it: it only
        // reads the group's committed offsets.
        let consumer = Arc::new(settings.reader(&w.group)?);
        let (stalls, cancel) = (stalls.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut seen = BTreeMap::new();
            let every = (after / 4).max(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let look = {
                    let (consumer, topic) = (Arc::clone(&consumer), w.topic.clone());
                    tokio::task::spawn_blocking(move || {
                        progress(&consumer, &topic, Duration::from_secs(5))
                    })
                    .await
                };
                let look = match look {
                    Ok(Ok(look)) => look,
                    // The broker does not answer: /readyz says so already.
                    Ok(Err(e)) => {
                        tracing::debug!(group = %w.group, error = %e, "could not read the group's progress");
                        continue;
                    }
                    Err(_) => continue,
                };
                LAG.with_label_values(&[w.group.as_str()])
                    .set(look.iter().map(|&(_, n, h)| (h - n).max(0)).sum());
                let stuck = fold(&mut seen, Instant::now(), &look, after);
                let mut current = stalls.lock();
                if stuck.is_empty() {
                    if current.remove(&w.group).is_some() {
                        tracing::info!(group = %w.group, topic = %w.topic, "consumer group moving again");
                        STALLED.with_label_values(&[w.group.as_str()]).set(0);
                    }
                    continue;
                }
                let waiting: i64 = stuck.iter().map(|s| s.1).sum();
                let parts: Vec<String> = stuck
                    .iter()
                    .map(|(p, n, _)| format!("{}[{p}]: {n} waiting", w.topic))
                    .collect();
                let line = format!(
                    "consumer group {} stalled: it committed nothing for {} s on {}; {} until \
                     it moves (check that its role runs and that the broker keeps its consumer \
                     groups)",
                    w.group,
                    after.as_secs(),
                    parts.join(", "),
                    w.consequence
                );
                if !current.contains_key(&w.group) {
                    tracing::error!(group = %w.group, topic = %w.topic, waiting, "{line}");
                    STALLED.with_label_values(&[w.group.as_str()]).set(1);
                }
                current.insert(w.group.clone(), line);
            }
        });
    }
    Ok(stalls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_stuck_only_while_messages_wait_past_an_unmoving_offset() {
        let after = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut seen = BTreeMap::new();
        // Messages wait at the first look: the clock starts, nothing yet.
        assert!(fold(&mut seen, t0, &[(0, 10, 20), (1, 5, 5)], after).is_empty());
        // 31 s later the offset has not moved: stuck, with what waits.
        let t1 = t0 + Duration::from_secs(31);
        let stuck = fold(&mut seen, t1, &[(0, 10, 25), (1, 5, 5)], after);
        assert_eq!(stuck.len(), 1);
        assert_eq!((stuck[0].0, stuck[0].1), (0, 15));
        // It moves: the clock starts again.
        let t2 = t1 + Duration::from_secs(10);
        assert!(fold(&mut seen, t2, &[(0, 11, 25), (1, 5, 5)], after).is_empty());
        let t3 = t2 + Duration::from_secs(29);
        assert!(fold(&mut seen, t3, &[(0, 11, 25), (1, 5, 5)], after).is_empty());
        // Caught up: an unmoving offset with nothing waiting is idle, not stuck.
        let t4 = t3 + Duration::from_secs(60);
        assert!(fold(&mut seen, t4, &[(0, 25, 25), (1, 5, 5)], after).is_empty());
        let t5 = t4 + Duration::from_secs(60);
        assert!(fold(&mut seen, t5, &[(0, 25, 25), (1, 5, 5)], after).is_empty());
    }
}
