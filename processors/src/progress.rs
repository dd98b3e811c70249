//! The processors' progress per partition of the requests topic, for a
//! pending request's place in line (ingest's `GET /v1/requests/{id}`).
//!
//! Once per batch, in the same pipeline as the batch's lookups (so after
//! every decision of the batch is readable by request id, and without a
//! round trip of its own), each partition of the batch gets its field in
//! [`KeyLayout::progress`]: the highest offset gone through and a recent
//! decision rate. Written with the batch's lookups, before its events are
//! acknowledged: the decisions are recorded in Redis by then, which is
//! what a reader of the place in line waits for.
//!
//! The last writer wins: a redelivery after a crash or a rebalance moves
//! the offset back to where the processors really are again, which is
//! where the requests behind it wait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedMessage};
use seckill_schemas::state::Progress as Record;
use seckill_schemas::KeyLayout;

/// How far back the rate looks: a batch's weight in it halves about every
/// `TAU * ln 2` (2 s).
const TAU: Duration = Duration::from_secs(3);

/// A gap between two batches of a partition longer than this is idle time
/// (no backlog: a backlog is read within the batch wait), which says
/// nothing about how fast the processors work through a queue; only this
/// much of it counts.
const IDLE_GAP: Duration = Duration::from_secs(1);

/// Per partition: when its last batch was recorded, and the rate so far.
struct Track {
    at: Instant,
    rate: Option<f64>,
}

/// The progress recorder of one processor.
pub(crate) struct Progress {
    key: String,
    /// Locked only to fold a batch in, never across an await.
    tracks: Mutex<HashMap<i32, Track>>,
}

impl Progress {
    pub(crate) fn new(keys: &KeyLayout) -> Self {
        Self {
            key: keys.progress(),
            tracks: Mutex::new(HashMap::new()),
        }
    }

    /// Adds the progress of a batch of `messages` (all of them gone
    /// through) to `pipe`, the batch's lookups, or to a new pipeline when
    /// the batch has none. `None` only for an empty batch.
    pub(crate) fn add_to(
        &self,
        pipe: Option<redis::Pipeline>,
        messages: &[OwnedMessage],
    ) -> Option<redis::Pipeline> {
        let per_partition = tally(messages.iter().map(|m| (m.partition(), m.offset())));
        if per_partition.is_empty() {
            return pipe;
        }
        let now = Instant::now();
        let now_ms = seckill_schemas::now_ms();
        let mut pipe = pipe.unwrap_or_else(redis::pipe);
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        for (partition, (count, highest)) in per_partition {
            let rate = match tracks.get(&partition) {
                Some(t) => fold(t.rate, count, now.saturating_duration_since(t.at)),
                // The first batch seen of a partition: no interval yet.
                None => None,
            };
            tracks.insert(partition, Track { at: now, rate });
            let record = Record {
                decided_offset: highest,
                rate_per_sec: rate,
                updated_ms: now_ms,
            };
            pipe.hset(&self.key, partition, record.encode()).ignore();
        }
        Some(pipe)
    }
}

/// Per partition: (messages, highest offset).
fn tally(messages: impl Iterator<Item = (i32, i64)>) -> Vec<(i32, (u64, i64))> {
    let mut per: HashMap<i32, (u64, i64)> = HashMap::new();
    for (partition, offset) in messages {
        let e = per.entry(partition).or_insert((0, offset));
        e.0 += 1;
        e.1 = e.1.max(offset);
    }
    let mut out: Vec<_> = per.into_iter().collect();
    out.sort_unstable_by_key(|(p, _)| *p);
    out
}

/// The rate after a batch of `count` messages that came `since` after the
/// previous batch of its partition: an exponentially weighted average of
/// messages per second over time (each interval weighs by its length), the
/// idle part of a long gap left out. The first interval gives the rate
/// itself.
fn fold(rate: Option<f64>, count: u64, since: Duration) -> Option<f64> {
    let dt = since.min(IDLE_GAP).as_secs_f64();
    if dt <= 0.0 {
        // Two batches in the same instant: no interval to measure; keep
        // what is known.
        return rate;
    }
    let sample = count as f64 / dt;
    let next = match rate {
        None => sample,
        Some(r) => {
            let keep = (-dt / TAU.as_secs_f64()).exp();
            r * keep + sample * (1.0 - keep)
        }
    };
    next.is_finite().then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn message(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"c1".to_vec()),
            "t.requests".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn a_batch_counts_and_tops_each_partition() {
        let got = tally([(1, 10), (0, 4), (1, 12), (1, 11), (0, 3)].into_iter());
        assert_eq!(got, vec![(0, (2, 4)), (1, (3, 12))]);
        assert!(tally(std::iter::empty()).is_empty());
    }

    #[test]
    fn the_rate_follows_the_work_and_ignores_idle_time() {
        let ms = Duration::from_millis;
        // The first interval is the rate itself: 100 in 50 ms.
        let r = fold(None, 100, ms(50)).expect("a rate");
        assert!((r - 2000.0).abs() < 1e-6, "{r}");
        // Steady work keeps it.
        let mut steady = Some(r);
        for _ in 0..50 {
            steady = fold(steady, 100, ms(50));
        }
        let s = steady.expect("a rate");
        assert!((s - 2000.0).abs() < 1e-6, "{s}");
        // Twice as fast for 6 s (two time constants): most of the way
        // there, never past it.
        let mut faster = steady;
        for _ in 0..120 {
            faster = fold(faster, 200, ms(50));
        }
        let f = faster.expect("a rate");
        assert!(f > 3500.0 && f < 4000.0, "{f}");
        // A minute of idleness counts as one second: the rate is not
        // dragged to nothing by a quiet spell.
        let after_idle = fold(Some(2000.0), 100, Duration::from_secs(60)).expect("a rate");
        let one_second = fold(Some(2000.0), 100, Duration::from_secs(1)).expect("a rate");
        assert_eq!(after_idle, one_second);
        assert!(after_idle > 1000.0, "{after_idle}");
        // No interval: nothing learnt, nothing lost.
        assert_eq!(fold(Some(5.0), 10, Duration::ZERO), Some(5.0));
        assert_eq!(fold(None, 10, Duration::ZERO), None);
    }

    #[test]
    fn each_batch_writes_each_partition_once_and_learns_a_rate_from_the_second() {
        let keys = KeyLayout::new("p");
        let progress = Progress::new(&keys);
        assert!(progress.add_to(None, &[]).is_none());
        let first = progress
            .add_to(None, &[message(0, 5), message(2, 9), message(0, 6)])
            .expect("a pipeline");
        let packed = String::from_utf8_lossy(&first.get_packed_pipeline()).into_owned();
        assert_eq!(packed.matches("HSET").count(), 2, "{packed}");
        assert!(packed.contains("p:progress"), "{packed}");
        // Offset 6 for partition 0, no rate yet.
        assert!(packed.contains("6|0.000|"), "{packed}");
        assert!(packed.contains("9|0.000|"), "{packed}");
        std::thread::sleep(Duration::from_millis(20));
        let second = progress
            .add_to(Some(redis::pipe()), &[message(0, 7)])
            .expect("a pipeline");
        let packed = String::from_utf8_lossy(&second.get_packed_pipeline()).into_owned();
        assert_eq!(packed.matches("HSET").count(), 1, "{packed}");
        let value = packed
            .split("\r\n")
            .find(|l| l.starts_with("7|"))
            .expect("partition 0's record");
        let record = Record::parse(value).expect("readable");
        assert_eq!(record.decided_offset, 7);
        let rate = record.rate_per_sec.expect("a rate from the second batch");
        // One message in 20 ms or a little more.
        assert!(rate > 1.0 && rate <= 50.0, "{rate}");
    }
}
