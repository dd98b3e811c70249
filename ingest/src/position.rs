//! A pending request's place in line.
//!
//! The broker's acknowledgement of a purchase says where it went
//! (partition and offset). A background writer records that, with the
//! buyer, under [`KeyLayout::position`] (a field of a windowed hash); the
//! purchase's answer never waits for it. The processors record how far
//! they are on each partition ([`KeyLayout::progress`], once per batch).
//! What is ahead of a request is the difference of the two; see [`place`].
//!
//! A position is a convenience: the request itself is safe in the log
//! once acknowledged. So a full writer queue drops the position (counted,
//! `seckill_ingest_positions_total{outcome="dropped"}`), and a failed
//! write is not retried; such a request just answers `pending` without a
//! place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use redis::aio::ConnectionManager;
use seckill_kafka::{KafkaConsumer, KafkaSettings};
use seckill_schemas::state::{lookup_shard, position_windows, LookupWindows, Position, Progress};
use seckill_schemas::{now_ms, KeyLayout, QueuePlace};
use tokio::sync::mpsc;

use crate::internal_events;

/// Positions waiting for the writer, at most (a few hundred ms of a 30k/s
/// load); past that they are dropped.
const QUEUE: usize = 16_384;

/// Positions written in one pipeline, at most.
const WRITE_BATCH: usize = 1024;

/// Adds the reads of `request_id`'s position to `pipe`, in the windows it
/// may have been written in, then the key an older ingest wrote it under;
/// [`crate::lookup::first`] picks the answer.
pub(crate) fn queue_position_reads(pipe: &mut redis::Pipeline, keys: &KeyLayout, request_id: &str) {
    crate::lookup::queue_windowed_reads(
        pipe,
        position_windows(),
        request_id,
        |w| keys.position(request_id, w),
        keys.legacy_position(request_id),
    );
}

/// Progress this old while messages wait means the processors are stalled
/// or down (the stall watch's default); no wait is estimated then.
const STALE_AFTER_MS: i64 = 30_000;

/// How long a consumer group's committed offset, once read, answers.
const RESUME_FRESH: Duration = Duration::from_secs(1);

/// The longest wait for the broker to tell a committed offset.
const RESUME_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a request went on the requests topic, as the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placed {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// One position for the writer.
struct Entry {
    request_id: String,
    position: Position,
}

/// The positions writer and the readers of the place in line.
pub(crate) struct Line {
    tx: mpsc::Sender<Entry>,
    progress_key: String,
    /// Where the processors resume on each partition, when their progress
    /// is not known (none: their group is not configured).
    resume: Option<ResumePoints>,
}

impl Line {
    /// Starts the positions writer; it ends when the last [`Line`] is
    /// dropped, after writing what it holds. `processors_group`: the
    /// consumer group deciding `requests_topic`, whose committed offsets
    /// answer before the processors report progress.
    pub(crate) fn start(
        redis: ConnectionManager,
        keys: &KeyLayout,
        kafka: &KafkaSettings,
        processors_group: Option<&str>,
        requests_topic: &str,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let resume = match processors_group {
            Some(group) => Some(ResumePoints {
                // Under the group's id, never joining it: it only reads
                // the group's committed offsets (like the stall watch).
                consumer: Arc::new(kafka.reader(group)?),
                topic: requests_topic.to_owned(),
                cache: tokio::sync::Mutex::new(HashMap::new()),
            }),
            None => None,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_positions(rx, redis, keys.clone()));
        Ok(Self {
            tx,
            progress_key: keys.progress(),
            resume,
        })
    }

    /// Hands the position of a purchase to the writer; never waits.
    pub(crate) fn record(&self, request_id: &str, user_id: &str, placed: Placed) {
        let entry = Entry {
            request_id: request_id.to_owned(),
            position: Position {
                partition: placed.partition,
                offset: placed.offset,
                user_id: user_id.to_owned(),
            },
        };
        if self.tx.try_send(entry).is_err() {
            internal_events::positions("dropped", 1);
        }
    }

    /// The place in line of a pending request at `placed`. Reads the
    /// processors' progress on its partition (one Redis call), or, when
    /// they have reported none there, their group's committed offset.
    pub(crate) async fn place(
        &self,
        con: &mut ConnectionManager,
        placed: Placed,
    ) -> Result<QueuePlace, redis::RedisError> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(&self.progress_key)
            .arg(placed.partition)
            .query_async(con)
            .await?;
        let progress = raw.and_then(|r| match Progress::parse(&r) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "unreadable processor progress; ignored");
                None
            }
        });
        let next = match (&progress, &self.resume) {
            (Some(p), _) => Some(p.decided_offset.saturating_add(1)),
            (None, Some(resume)) => resume.next_offset(placed.partition).await,
            (None, None) => None,
        };
        Ok(place(placed, next, progress.as_ref(), now_ms()))
    }
}

/// Writes the positions it is handed. Whatever came in while a pipeline
/// was on its way goes out in the next one, so under load each pipeline
/// carries a few ms of positions and when quiet each goes out at once.
async fn write_positions(
    mut rx: mpsc::Receiver<Entry>,
    mut redis: ConnectionManager,
    keys: KeyLayout,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        match position_pipeline(&keys, &batch, LookupWindows::now_secs())
            .query_async::<()>(&mut redis)
            .await
        {
            Ok(()) => internal_events::positions("written", batch.len()),
            Err(e) => {
                internal_events::positions("failed", batch.len());
                tracing::debug!(error = %e, n = batch.len(), "could not record request positions");
            }
        }
        batch.clear();
    }
}

/// The writes of `batch` at `now_secs`: one HSET per position hash it
/// touches, and that hash's expiry.
fn position_pipeline(keys: &KeyLayout, batch: &[Entry], now_secs: u64) -> redis::Pipeline {
    let windows = position_windows();
    let window = windows.current(now_secs);
    let mut hashes: HashMap<u32, Vec<(&str, String)>> = HashMap::new();
    for e in batch {
        hashes
            .entry(lookup_shard(&e.request_id))
            .or_default()
            .push((e.request_id.as_str(), e.position.encode()));
    }
    let expires_at = windows.expires_at(window);
    let mut pipe = redis::pipe();
    for (shard, fields) in &hashes {
        let key = keys.position_hash(window, *shard);
        pipe.hset_multiple(&key, fields).ignore();
        pipe.cmd("EXPIREAT").arg(&key).arg(expires_at).ignore();
    }
    pipe
}

/// The place of a request at `placed`, given the next offset of its
/// partition the processors will decide (`next`, when known) and their
/// last progress report there. Every message from `next` up to the
/// request is ahead of it.
fn place(
    placed: Placed,
    next: Option<i64>,
    progress: Option<&Progress>,
    now_ms: i64,
) -> QueuePlace {
    let ahead = next.map(|n| u64::try_from(placed.offset.saturating_sub(n)).unwrap_or(0));
    let rate = progress.and_then(|p| p.rate_per_sec);
    let stalled = progress.is_some_and(|p| {
        ahead.unwrap_or(0) > 0 && now_ms.saturating_sub(p.updated_ms) > STALE_AFTER_MS
    });
    let estimated_wait_ms = match (ahead, rate) {
        (Some(ahead), Some(rate)) if !stalled => Some(wait_ms(ahead, rate)),
        _ => None,
    };
    QueuePlace {
        partition: placed.partition,
        offset: placed.offset,
        ahead,
        estimated_wait_ms,
        decided_rate_per_sec: rate,
    }
}

/// Time for `ahead` messages and then the request itself at `rate` per
/// second, rounded up to the ms (`rate` > 0; a float-to-int `as` saturates).
fn wait_ms(ahead: u64, rate: f64) -> u64 {
    ((ahead as f64 + 1.0) * 1000.0 / rate).ceil() as u64
}

/// The processors group's resume points (committed offsets), read from
/// the broker at most once per [`RESUME_FRESH`] per partition.
struct ResumePoints {
    consumer: Arc<KafkaConsumer>,
    topic: String,
    /// Partition -> (when read, next offset). A tokio mutex, held across
    /// the read: one read per partition at a time, the others wait for it.
    cache: tokio::sync::Mutex<HashMap<i32, (Instant, Option<i64>)>>,
}

impl ResumePoints {
    /// The next offset of `partition` the group will read: its committed
    /// offset, or, when it has committed none, the partition's low
    /// watermark (the group starts at the earliest message). `None` when
    /// the broker does not tell.
    async fn next_offset(&self, partition: i32) -> Option<i64> {
        let mut cache = self.cache.lock().await;
        if let Some((at, next)) = cache.get(&partition) {
            if at.elapsed() < RESUME_FRESH {
                return *next;
            }
        }
        let (consumer, topic) = (Arc::clone(&self.consumer), self.topic.clone());
        let next = tokio::task::spawn_blocking(move || read_next(&consumer, &topic, partition))
            .await
            .ok()
            .flatten();
        cache.insert(partition, (Instant::now(), next));
        next
    }
}

fn read_next(consumer: &KafkaConsumer, topic: &str, partition: i32) -> Option<i64> {
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(topic, partition);
    let committed = match consumer.committed_offsets(wanted, RESUME_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "could not read the processors' committed offset");
            return None;
        }
    };
    match committed
        .find_partition(topic, partition)
        .map(|e| e.offset())
    {
        Some(Offset::Offset(o)) => Some(o),
        _ => consumer
            .fetch_watermarks(topic, partition, RESUME_TIMEOUT)
            .map(|(low, _)| low)
            .map_err(|e| tracing::debug!(error = %e, "could not read the low watermark"))
            .ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: Placed = Placed {
        partition: 2,
        offset: 100,
    };

    fn progress(decided: i64, rate: Option<f64>, updated_ms: i64) -> Progress {
        Progress {
            decided_offset: decided,
            rate_per_sec: rate,
            updated_ms,
        }
    }

    #[test]
    fn what_is_ahead_is_every_undecided_message_before_the_request() {
        let now = 1_000_000;
        let p = progress(89, Some(50.0), now - 100);
        let got = place(AT, Some(90), Some(&p), now);
        // Offsets 90..=99 wait before it; then it: 11 messages at 50/s.
        assert_eq!(got.ahead, Some(10));
        assert_eq!(got.estimated_wait_ms, Some(220));
        assert_eq!(got.decided_rate_per_sec, Some(50.0));
        assert_eq!((got.partition, got.offset), (2, 100));
        // Next in line.
        assert_eq!(place(AT, Some(100), Some(&p), now).ahead, Some(0));
        assert_eq!(
            place(AT, Some(100), Some(&p), now).estimated_wait_ms,
            Some(20)
        );
        // Decided past it already (its answer is on its way): never below 0.
        assert_eq!(place(AT, Some(150), Some(&p), now).ahead, Some(0));
        // From a committed offset alone: exact count, no rate, no estimate.
        let committed = place(AT, Some(97), None, now);
        assert_eq!(committed.ahead, Some(3));
        assert_eq!(committed.estimated_wait_ms, None);
        assert_eq!(committed.decided_rate_per_sec, None);
        // Nothing known: just where it is.
        let unknown = place(AT, None, None, now);
        assert_eq!((unknown.ahead, unknown.estimated_wait_ms), (None, None));
    }

    #[test]
    fn no_estimate_without_a_rate_or_from_stalled_processors() {
        let now = 1_000_000;
        let no_rate = progress(89, None, now);
        assert_eq!(
            place(AT, Some(90), Some(&no_rate), now).estimated_wait_ms,
            None
        );
        // Silent for more than 30 s while messages wait: stalled.
        let old = progress(89, Some(50.0), now - 30_001);
        let stalled = place(AT, Some(90), Some(&old), now);
        assert_eq!(stalled.ahead, Some(10));
        assert_eq!(stalled.estimated_wait_ms, None);
        assert_eq!(stalled.decided_rate_per_sec, Some(50.0));
        // Just in time, or with nothing ahead (idle, not stalled): estimated.
        let recent = progress(89, Some(50.0), now - 29_999);
        assert!(place(AT, Some(90), Some(&recent), now)
            .estimated_wait_ms
            .is_some());
        assert_eq!(
            place(AT, Some(100), Some(&old), now).estimated_wait_ms,
            Some(20)
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        assert_eq!(wait_ms(u64::MAX, 1e-300), u64::MAX);
        assert_eq!(wait_ms(0, 1e300), 1);
        let far = Placed {
            partition: 0,
            offset: i64::MAX,
        };
        assert_eq!(
            place(far, Some(i64::MIN), None, 0).ahead,
            Some(i64::MAX as u64)
        );
        let near = Placed {
            partition: 0,
            offset: 0,
        };
        assert_eq!(place(near, Some(i64::MAX), None, 0).ahead, Some(0));
        let future = progress(0, Some(10.0), i64::MAX);
        assert!(place(far, Some(1), Some(&future), i64::MIN)
            .estimated_wait_ms
            .is_some());
    }

    /// The commands of a packed pipeline, each as its arguments.
    fn commands(pipe: &redis::Pipeline) -> Vec<Vec<String>> {
        let packed = String::from_utf8(pipe.get_packed_pipeline()).expect("utf-8");
        let mut lines = packed.split("\r\n");
        let mut out = Vec::new();
        while let Some(head) = lines.next().filter(|l| !l.is_empty()) {
            let n: usize = head.trim_start_matches('*').parse().expect("array length");
            out.push(
                (0..n)
                    .map(|_| {
                        lines.next().expect("bulk length");
                        lines.next().expect("bulk").to_owned()
                    })
                    .collect(),
            );
        }
        out
    }

    #[test]
    fn positions_go_as_one_hset_per_hash_into_the_hash_readers_read() {
        let keys = KeyLayout::new("t");
        let now = 1_700_000_123;
        let batch: Vec<Entry> = (0..500)
            .map(|i| Entry {
                request_id: format!("req-{i}"),
                position: Position {
                    partition: i % 4,
                    offset: i64::from(i),
                    user_id: format!("u{i}"),
                },
            })
            .collect();
        let cmds = commands(&position_pipeline(&keys, &batch, now));
        let window = position_windows().current(now);
        // The reader's windows at the same clock include it.
        assert!(position_windows().to_read(now).contains(&window));
        let mut stored = HashMap::new();
        let mut hashes = 0;
        for c in &cmds {
            match c[0].as_str() {
                "HMSET" => {
                    hashes += 1;
                    for pair in c[2..].chunks(2) {
                        stored.insert(pair[0].clone(), (c[1].clone(), pair[1].clone()));
                    }
                }
                "EXPIREAT" => assert_eq!(
                    c[2],
                    position_windows().expires_at(window).to_string(),
                    "{c:?}"
                ),
                other => panic!("unexpected command {other}: {c:?}"),
            }
        }
        assert!(hashes <= 16, "{hashes} HMSETs for one batch");
        assert_eq!(cmds.len(), 2 * hashes, "each hash gets its expiry");
        assert_eq!(stored.len(), batch.len());
        for e in &batch {
            let (key, value) = &stored[&e.request_id];
            assert_eq!(key, &keys.position(&e.request_id, window));
            assert_eq!(Position::parse(value).as_ref(), Ok(&e.position));
        }
    }
}
