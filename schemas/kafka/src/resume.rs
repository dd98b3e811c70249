//! The resume guard: a group member reads a newly assigned partition from
//! its committed offset on, even when the broker answers that fetch from
//! further on.
//!
//! A broker answers a fetch at offset C with the record batch that holds C
//! (the client drops the records before C). tansu 0.6's memory engine
//! (`dynostore`) answers with the first batch that *starts* at or after C,
//! so a member resuming inside a batch silently skips the rest of it.
//! Members store offsets at their own batch boundaries, which rarely fall
//! on a producer's, so after a restart or a rebalance accepted requests
//! were never decided (and decided orders never stored).
//!
//! The guard notes each partition the member is assigned, and checks the
//! first record read from it against the group's committed offset: one
//! past it means records were skipped, so the partition is read again from
//! further back (twice as far each time), the records before the committed
//! offset being dropped here, until the committed offset comes. Records
//! that are really gone (retention, compaction, transaction markers) end
//! the search as soon as something at or before the committed offset has
//! been read, or the partition was read from its start. With a broker that
//! keeps the contract (Kafka, tansu's SQLite engine) the first record is the
//! committed one and the guard only looks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

static REWINDS: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
    prometheus::register_int_counter!(
        "seckill_resume_rewinds_total",
        "Times a member read a newly assigned partition again from further back because \
         the broker answered its fetch from past the committed offset, or not at all"
    )
    .expect("metric registered once")
});

/// How long a committed-offset lookup or a seek may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a newly assigned partition may give nothing before it is read
/// again from further back (see [`ResumeGuard::check_idle`]). A false
/// alarm (records slow to come, or none past the committed offset) costs a
/// fetch of a few records again, nothing more.
pub(crate) const IDLE_AFTER: Duration = Duration::from_millis(1000);

/// How far back the first read again goes at least (twice as far each
/// time after): a producer's batch holds dozens of records or more.
const MIN_BACK: i64 = 64;

/// A newly assigned partition whose committed record has not come yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    topic: String,
    partition: i32,
    /// The group's committed offset (`None`: not looked up yet).
    from: Option<i64>,
    /// How far before it the last seek went (0: none yet).
    back: i64,
    /// A record before `from` was read since that seek.
    below: bool,
    /// Since when nothing came: assigned, or the last seek.
    since: Instant,
}

/// The partitions a member was assigned and has not read from yet (a
/// handful, right after a rebalance).
#[derive(Debug, Default)]
pub(crate) struct ResumeGuard {
    /// Whether `pending` holds anything: read before every record, so the
    /// common case takes no lock.
    armed: AtomicBool,
    pending: Mutex<Vec<Pending>>,
}

/// What to do with a record.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Drop,
    /// Drop it: the partition reads from where it should from now on.
    DropDone,
    /// Drop it and read the partition again from this offset.
    Seek(i64),
}

impl ResumeGuard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some assigned partition has not given its committed record.
    pub(crate) fn armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    /// The member was assigned `tpl`.
    pub(crate) fn assigned(&self, tpl: &TopicPartitionList) {
        let mut pending = self.lock();
        for e in tpl.elements() {
            pending.retain(|p| !(p.topic == e.topic() && p.partition == e.partition()));
            pending.push(Pending {
                topic: e.topic().to_owned(),
                partition: e.partition(),
                from: None,
                back: 0,
                below: false,
                since: Instant::now(),
            });
        }
        self.armed.store(!pending.is_empty(), Ordering::Release);
    }

    /// The member lost `tpl`.
    pub(crate) fn revoked(&self, tpl: &TopicPartitionList) {
        let mut pending = self.lock();
        for e in tpl.elements() {
            pending.retain(|p| !(p.topic == e.topic() && p.partition == e.partition()));
        }
        self.armed.store(!pending.is_empty(), Ordering::Release);
    }

    /// Whether `m`, just read by `consumer`, goes to the caller; a record
    /// that does not is read again (or was before the committed offset).
    pub(crate) fn admit<C: Consumer<X>, X: ConsumerContext>(
        &self,
        consumer: &C,
        m: &impl Message,
    ) -> bool {
        if !self.armed() {
            return true;
        }
        let Some(p) = self.find(m.topic(), m.partition()) else {
            return true;
        };
        let Some(from) = self.committed(consumer, &p) else {
            // No committed offset: read from the start, nothing to check.
            self.done(&p);
            return true;
        };
        match verdict(from, p.back, p.below, m.offset()) {
            Verdict::Keep => {
                self.done(&p);
                true
            }
            Verdict::DropDone => {
                self.done(&p);
                false
            }
            Verdict::Drop => {
                self.update(&p, |q| q.below = true);
                false
            }
            Verdict::Seek(to) => {
                self.seek(consumer, &p, from, to, m.offset());
                false
            }
        }
    }

    /// Reads again from further back every partition that gave nothing for
    /// [`IDLE_AFTER`]: the broker may have skipped the batch that holds the
    /// committed offset with no later batch to answer with. Its high
    /// watermark would tell, but tansu 0.6's memory engine answers
    /// ListOffsets with its last batch's first offset + 1; a partition with
    /// nothing past the committed offset reads a few records again (dropped
    /// here) and then waits as before.
    pub(crate) fn check_idle<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C) {
        let idle: Vec<Pending> = self
            .lock()
            .iter()
            .filter(|p| !p.below && p.since.elapsed() >= IDLE_AFTER)
            .cloned()
            .collect();
        for p in idle {
            let Some(from) = self.committed(consumer, &p) else {
                self.done(&p);
                continue;
            };
            match verdict(from, p.back, false, from + 1) {
                Verdict::Seek(to) => self.seek(consumer, &p, from, to, -1),
                // The start of the partition: nothing was skipped.
                _ => self.done(&p),
            }
        }
    }

    fn find(&self, topic: &str, partition: i32) -> Option<Pending> {
        self.lock()
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)
            .cloned()
    }

    /// The committed offset of `p`, looked up (with every pending
    /// partition's, in one request) the first time it is needed.
    fn committed<C: Consumer<X>, X: ConsumerContext>(
        &self,
        consumer: &C,
        p: &Pending,
    ) -> Option<i64> {
        if p.from.is_some() {
            return p.from;
        }
        let mut tpl = TopicPartitionList::new();
        for q in self.lock().iter().filter(|q| q.from.is_none()) {
            tpl.add_partition(&q.topic, q.partition);
        }
        let found = match consumer.committed_offsets(tpl, CALL_TIMEOUT) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(
                    topic = %p.topic, error = %e,
                    "could not read the committed offsets; newly assigned partitions go unchecked"
                );
                return None;
            }
        };
        for q in self.lock().iter_mut().filter(|q| q.from.is_none()) {
            if let Some(Offset::Offset(o)) = found
                .find_partition(&q.topic, q.partition)
                .map(|e| e.offset())
            {
                q.from = Some(o);
            }
        }
        self.find(&p.topic, p.partition).and_then(|q| q.from)
    }

    fn seek<C: Consumer<X>, X: ConsumerContext>(
        &self,
        consumer: &C,
        p: &Pending,
        from: i64,
        to: i64,
        read: i64,
    ) {
        tracing::warn!(
            topic = %p.topic, partition = p.partition, committed = from, read, again_from = to,
            "the broker answered a fetch at the committed offset from further on (read: the \
             first offset it gave, -1 none); reading the partition again from further back"
        );
        REWINDS.inc();
        match consumer.seek(&p.topic, p.partition, Offset::Offset(to), CALL_TIMEOUT) {
            Ok(()) => self.update(p, |q| {
                q.back = from - to;
                q.below = false;
                q.since = Instant::now();
            }),
            Err(e) => {
                tracing::error!(
                    topic = %p.topic, partition = p.partition, error = %e,
                    "could not read the partition again: records after its committed offset \
                     may be skipped"
                );
                self.done(p);
            }
        }
    }

    fn update(&self, p: &Pending, change: impl FnOnce(&mut Pending)) {
        if let Some(q) = self
            .lock()
            .iter_mut()
            .find(|q| q.topic == p.topic && q.partition == p.partition)
        {
            change(q);
        }
    }

    /// The partition reads from where it should: stop checking it.
    fn done(&self, p: &Pending) {
        let mut pending = self.lock();
        pending.retain(|q| !(q.topic == p.topic && q.partition == p.partition));
        self.armed.store(!pending.is_empty(), Ordering::Release);
    }
}

/// The first records of a partition whose committed offset is `from`,
/// read again from `back` before it (0: not yet), `below`: a record before
/// `from` came since: what to do with the next one, at `offset`.
fn verdict(from: i64, back: i64, below: bool, offset: i64) -> Verdict {
    if offset == from {
        return Verdict::Keep;
    }
    if offset == from - 1 {
        // The batch that holds it ends here or holds `from` too: what
        // comes next is `from`.
        return Verdict::DropDone;
    }
    if offset < from {
        // Read again from further back: the group is past it.
        return Verdict::Drop;
    }
    // Records from `from` to `offset` did not come. Once something before
    // `from` came, or the partition was read from its start, they are not
    // there to read.
    if below || from == 0 || (back > 0 && back >= from) {
        return Verdict::Keep;
    }
    let back = (back * 2).max(offset - from).max(MIN_BACK);
    Verdict::Seek((from - back).max(0))
}

#[cfg(test)]
mod tests {
    use super::{verdict, Verdict};

    #[test]
    fn the_first_records_must_start_at_the_committed_offset() {
        // A broker that keeps the contract: the committed record first.
        assert_eq!(verdict(7, 0, false, 7), Verdict::Keep);
        // tansu's memory engine resumed at the next batch: read again from
        // 64 before at least, twice as far each time, down to the start.
        assert_eq!(verdict(7, 0, false, 20), Verdict::Seek(0));
        assert_eq!(verdict(1000, 0, false, 1020), Verdict::Seek(936));
        assert_eq!(verdict(1000, 0, false, 1100), Verdict::Seek(900));
        assert_eq!(verdict(1000, 64, false, 1020), Verdict::Seek(872));
        // Records before the committed one are dropped, then it is kept;
        // the one just before it is the last to check.
        assert_eq!(verdict(1000, 64, false, 990), Verdict::Drop);
        assert_eq!(verdict(1000, 64, true, 999), Verdict::DropDone);
        assert_eq!(verdict(1000, 64, true, 1000), Verdict::Keep);
        // Really gone: something before it came, or read from the start.
        assert_eq!(verdict(1000, 64, true, 1003), Verdict::Keep);
        assert_eq!(verdict(7, 7, false, 20), Verdict::Keep);
        // A partition's start is a batch's start: nothing to read again.
        assert_eq!(verdict(0, 0, false, 5), Verdict::Keep);
    }
}
