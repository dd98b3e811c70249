//! Kafka plumbing shared by every role: client settings, topic creation,
//! batch reads, offset bookkeeping and dead-letter publishing.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::Topics;

/// Every consumer a role creates: librdkafka's own log lines and the
/// group's rebalances go to the role's log, so "which member holds which
/// partition" can be read off the logs during an incident.
pub type KafkaConsumer = StreamConsumer<RoleContext>;

/// The client context of [`KafkaConsumer`].
#[derive(Debug, Default, Clone, Copy)]
pub struct RoleContext;

impl ClientContext for RoleContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }
}

impl ConsumerContext for RoleContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let list = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| format!("{}[{}]", e.topic(), e.partition()))
                .collect::<Vec<_>>()
                .join(",")
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = %list(tpl), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %list(tpl), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

/// How to reach the broker; shared by every client a role creates.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group session timeout. A group (re)joins after roughly half
    /// of it, so tests keep it short.
    pub session_timeout_ms: u32,
}

impl KafkaSettings {
    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.keepalive.enable", "true")
            .set("log_level", "4");
        config
    }

    /// An idempotent producer (`acks=all`, ordered per partition, no
    /// duplicates from its own retries). `message_timeout_ms` bounds how long
    /// a send may take before it is reported as failed; 0 means retry forever.
    pub fn producer(&self, message_timeout_ms: u32) -> Result<FutureProducer, KafkaError> {
        self.base()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", message_timeout_ms.to_string())
            .create()
    }

    /// A group consumer that never stores an offset by itself: the caller
    /// stores offsets once the work for them is done (at-least-once).
    pub fn group_consumer(&self, group_id: &str) -> Result<KafkaConsumer, KafkaError> {
        let heartbeat = (self.session_timeout_ms / 3).max(100);
        // The rebalance timeout a member announces is its max poll interval.
        // Some coordinators (tansu) hold a rebalance until every old member
        // rejoins or this timeout passes, so a member killed with SIGKILL
        // would block its successor for the default 5 minutes. The loops
        // here poll every few milliseconds, so a short interval costs
        // nothing.
        let max_poll = (self.session_timeout_ms * 3).max(20_000);
        self.base()
            .set("group.id", group_id)
            .set("max.poll.interval.ms", max_poll.to_string())
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "200")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", heartbeat.to_string())
            .set("fetch.wait.max.ms", "5")
            .set("fetch.min.bytes", "1")
            .set("enable.partition.eof", "false")
            .create_with_context(RoleContext)
    }

    /// A member of `group` subscribed to `topic`, watched until `cancel`
    /// fires or the caller drops it, so that a coordinator that settles the
    /// group without giving it a partition cannot strand it
    /// ([`watch_assignment`]).
    pub fn group_member(
        &self,
        group: &str,
        topic: &str,
        cancel: &CancellationToken,
    ) -> Result<std::sync::Arc<KafkaConsumer>, KafkaError> {
        let consumer = std::sync::Arc::new(self.group_consumer(group)?);
        consumer.subscribe(&[topic])?;
        watch_assignment(
            std::sync::Arc::clone(&consumer),
            group.to_owned(),
            topic.to_owned(),
            Duration::from_millis(self.session_timeout_ms.into()),
            cancel.clone(),
        );
        Ok(consumer)
    }

    /// An admin client (topic creation, record deletion).
    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        self.base().create()
    }

    /// A consumer for tools that read partitions to their end: assigned by
    /// hand, told when a partition's end is reached, committing only what
    /// the caller stores and commits.
    pub fn reader(&self, group_id: &str) -> Result<KafkaConsumer, KafkaError> {
        self.base()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "5")
            .create_with_context(RoleContext)
    }

    /// A consumer that is assigned partitions by hand and never commits
    /// (listeners, tools). librdkafka wants a group id even so.
    pub fn plain_consumer(&self, group_id: &str) -> Result<KafkaConsumer, KafkaError> {
        self.base()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "5")
            .set("enable.partition.eof", "false")
            .create_with_context(RoleContext)
    }
}

/// Creates the deployment's topics with explicit partition counts; topics
/// that exist already are left as they are.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &Topics,
    partitions: i32,
    retry_tiers: usize,
) -> Result<(), KafkaError> {
    let admin = settings.admin()?;
    let wanted = [
        (&topics.requests, partitions),
        (&topics.orders, partitions),
        (&topics.requests_dlq, 1),
        (&topics.orders_dlq, 1),
        (&topics.fulfilment, partitions),
        (&topics.requests_quarantine, 1),
        (&topics.orders_quarantine, 1),
    ];
    let retries: Vec<String> = (1..=retry_tiers).map(|n| topics.orders_retry(n)).collect();
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(name, p)| (name.as_str(), *p))
        .chain(retries.iter().map(|name| (name.as_str(), partitions)))
        .map(|(name, p)| NewTopic::new(name, p, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(
                    |_| tracing::error!(topic = %name, error = %code, "could not create topic"),
                )
            }
        }
    }
    Ok(())
}

static GROUP_REJOINS: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        prometheus::register_int_counter_vec!(
            "seckill_group_rejoins_total",
            "Times a member left and rejoined its consumer group because the group \
             settled without giving it a partition although partitions were unowned",
            &["group"]
        )
        .expect("metric registered once")
    });

/// Keeps a group member from idling in a group that settled wrongly.
///
/// A coordinator can settle a generation in which this member holds no
/// partition while some partition has no owner, so its messages wait
/// forever. tansu 0.6 does this when the leader of the previous generation
/// died (SIGKILL) and is expelled between a follower's JoinGroup and its
/// SyncGroup: the follower's empty SyncGroup is taken as the leader's plan.
/// The member then leaves and rejoins the group, which makes it the leader
/// of a fresh generation.
///
/// Checks every half `session_timeout`, once the member has held nothing
/// for a whole session timeout (far longer than a rebalance takes). Proof
/// that a partition is unowned, from what the broker answers:
/// - the group is listed: it is stable and has no more members than the
///   topic has partitions (no assignor leaves a member empty then);
/// - it is not (tansu lists only groups that ever committed an offset):
///   some partition holds messages past the group's committed offset, and
///   that offset has not moved since the previous check.
fn watch_assignment(
    consumer: std::sync::Arc<KafkaConsumer>,
    group: String,
    topic: String,
    session_timeout: Duration,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let (every, settle) = (session_timeout / 2, session_timeout);
        let mut empty_since: Option<std::time::Instant> = None;
        let mut previous: Option<GroupView> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if std::sync::Arc::strong_count(&consumer) == 1 {
                // The role let go of its consumer: it is done with the group.
                return;
            }
            let holds = consumer.assignment().map(|a| a.count() > 0).unwrap_or(true);
            if holds {
                (empty_since, previous) = (None, None);
                continue;
            }
            let since = *empty_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < settle {
                continue;
            }
            let probe = {
                let (consumer, group, topic) = (
                    std::sync::Arc::clone(&consumer),
                    group.clone(),
                    topic.clone(),
                );
                tokio::task::spawn_blocking(move || group_view(&consumer, &group, &topic)).await
            };
            let view = match probe {
                Ok(Ok(view)) => view,
                Ok(Err(e)) => {
                    tracing::debug!(%group, error = %e, "could not describe the group");
                    continue;
                }
                Err(_) => continue,
            };
            if !view.stranded(previous.as_ref()) {
                tracing::debug!(%group, ?view, "member holds no partition; the group looks sound");
                previous = Some(view);
                continue;
            }
            tracing::warn!(
                %group, %topic, ?view,
                "the group settled without giving this member a partition although \
                 some partition has no owner; leaving and rejoining"
            );
            GROUP_REJOINS.with_label_values(&[group.as_str()]).inc();
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&[topic.as_str()]) {
                tracing::error!(%group, %topic, error = %e, "could not resubscribe");
            }
            (empty_since, previous) = (None, None);
        }
    });
}

/// What the broker says of a group and its topic, as far as
/// [`watch_assignment`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupView {
    /// (stable, members) when the broker lists the group.
    described: Option<(bool, usize)>,
    /// Per partition of the topic: (partition, the group's next offset to
    /// read (its committed offset, else the low watermark), high watermark).
    progress: Vec<(i32, i64, i64)>,
}

impl GroupView {
    /// Whether some partition has no owner, seen by a member that holds
    /// nothing; `before` is the previous view of the same idle spell.
    fn stranded(&self, before: Option<&GroupView>) -> bool {
        match self.described {
            Some((stable, members)) => stable && members > 0 && members <= self.progress.len(),
            None => {
                let Some(before) = before else {
                    return false;
                };
                self.progress.iter().any(|&(partition, next, high)| {
                    high > next
                        && before
                            .progress
                            .iter()
                            .any(|&(p, was, _)| p == partition && was == next)
                })
            }
        }
    }
}

fn group_view(consumer: &KafkaConsumer, group: &str, topic: &str) -> Result<GroupView, KafkaError> {
    let timeout = Duration::from_secs(5);
    let groups = consumer.fetch_group_list(Some(group), timeout)?;
    let described = groups
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .map(|g| (g.state().eq_ignore_ascii_case("stable"), g.members().len()));
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut wanted = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            wanted.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(wanted.clone(), timeout)?;
    let mut progress = Vec::new();
    for e in wanted.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        let next = match committed
            .find_partition(topic, e.partition())
            .map(|c| c.offset())
        {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        progress.push((e.partition(), next, high));
    }
    Ok(GroupView {
        described,
        progress,
    })
}

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

/// Header names on retry-tier and dead-letter messages. A message that
/// fails again gets them overwritten, never appended.
pub mod headers {
    pub const ERROR_CLASS: &str = "seckill-error-class";
    pub const ERROR: &str = "seckill-error";
    pub const ATTEMPT: &str = "seckill-attempt";
    pub const ORIGINAL_TOPIC: &str = "seckill-original-topic";
    pub const ORIGINAL_PARTITION: &str = "seckill-original-partition";
    pub const ORIGINAL_OFFSET: &str = "seckill-original-offset";
    pub const ORIGINAL_TIMESTAMP: &str = "seckill-original-timestamp";
    pub const FIRST_FAILURE_AT: &str = "seckill-first-failure-at";
    pub const LAST_FAILURE_AT: &str = "seckill-last-failure-at";
    /// When a retry-tier message is due (unix ms).
    pub const RETRY_AT: &str = "seckill-retry-at";
    /// How often ops replayed the message out of a DLQ.
    pub const REPLAY_COUNT: &str = "seckill-replay-count";
    /// W3C trace context; carried along unchanged.
    pub const TRACEPARENT: &str = "traceparent";
}

/// Reads a header as text.
pub fn header_str<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let hs = message.headers()?;
    hs.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Reads a numeric header.
pub fn header_i64(message: &OwnedMessage, name: &str) -> Option<i64> {
    header_str(message, name)?.parse().ok()
}

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// May succeed later (store unavailable, timeout): next retry tier.
    Transient,
    /// Cannot succeed as it is (invalid event, refused constraint): DLQ.
    Permanent,
    /// Not readable at all: DLQ.
    Unparseable,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Unparseable => "unparseable",
        }
    }
}

/// Headers for `message` as it moves to a retry tier or a DLQ after a
/// failure: where it first came from (kept from earlier failures), which
/// attempt failed, why, when first and last, and when it is due again.
/// Headers that are not seckill's (such as `traceparent`) are kept as they
/// are; seckill's own are replaced, so they never pile up.
pub fn failure_headers(
    message: &OwnedMessage,
    class: ErrorClass,
    error: &str,
    retry_at_ms: Option<i64>,
) -> OwnedHeaders {
    let now = crate::now_ms().to_string();
    let attempt = (header_i64(message, headers::ATTEMPT).unwrap_or(0) + 1).to_string();
    let original =
        |name: &str, own: String| header_str(message, name).map(str::to_owned).unwrap_or(own);
    let topic = original(headers::ORIGINAL_TOPIC, message.topic().to_owned());
    let partition = original(headers::ORIGINAL_PARTITION, message.partition().to_string());
    let offset = original(headers::ORIGINAL_OFFSET, message.offset().to_string());
    let timestamp = original(
        headers::ORIGINAL_TIMESTAMP,
        message.timestamp().to_millis().unwrap_or(0).to_string(),
    );
    let first = original(headers::FIRST_FAILURE_AT, now.clone());
    let retry_at = retry_at_ms.map(|t| t.to_string());
    let mut out = OwnedHeaders::new();
    if let Some(hs) = message.headers() {
        for h in hs.iter() {
            if !h.key.starts_with("seckill-") || h.key == headers::REPLAY_COUNT {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
    }
    let mut set = |key: &str, value: &str| {
        out = std::mem::replace(&mut out, OwnedHeaders::new()).insert(Header {
            key,
            value: Some(value),
        });
    };
    set(headers::ERROR_CLASS, class.as_str());
    set(headers::ERROR, error);
    set(headers::ATTEMPT, &attempt);
    set(headers::ORIGINAL_TOPIC, &topic);
    set(headers::ORIGINAL_PARTITION, &partition);
    set(headers::ORIGINAL_OFFSET, &offset);
    set(headers::ORIGINAL_TIMESTAMP, &timestamp);
    set(headers::FIRST_FAILURE_AT, &first);
    set(headers::LAST_FAILURE_AT, &now);
    if let Some(r) = &retry_at {
        set(headers::RETRY_AT, r);
    }
    out
}

/// Publishes `message`'s key and payload to `topic` with `headers` and waits
/// for the broker's acknowledgement.
pub async fn forward(
    producer: &FutureProducer,
    topic: &str,
    message: &OwnedMessage,
    headers: OwnedHeaders,
) -> Result<(), KafkaError> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

/// Sends `message` to `dlq_topic` with headers saying why.
pub async fn dead_letter(
    producer: &FutureProducer,
    dlq_topic: &str,
    message: &OwnedMessage,
    class: ErrorClass,
    error: &str,
) -> Result<(), KafkaError> {
    forward(
        producer,
        dlq_topic,
        message,
        failure_headers(message, class, error, None),
    )
    .await
}

/// Resolves after SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; only Ctrl-C stops this process");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Asks the broker for metadata through an existing producer's connection,
/// which tells a broker that is down from one that answers.
pub async fn broker_reachable(producer: &FutureProducer) -> Result<(), KafkaError> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|_| ())
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))
}

#[cfg(test)]
mod tests {
    use super::GroupView;

    fn listed(stable: bool, members: usize, partitions: usize) -> GroupView {
        GroupView {
            described: Some((stable, members)),
            progress: (0..partitions as i32).map(|p| (p, 0, 0)).collect(),
        }
    }

    fn unlisted(progress: &[(i32, i64, i64)]) -> GroupView {
        GroupView {
            described: None,
            progress: progress.to_vec(),
        }
    }

    #[test]
    fn an_empty_member_of_a_stable_group_with_spare_partitions_is_stranded() {
        assert!(listed(true, 1, 2).stranded(None));
        assert!(listed(true, 2, 2).stranded(None));
    }

    #[test]
    fn more_members_than_partitions_or_a_rebalance_in_progress_is_not_stranded() {
        // Some member legitimately idles when members outnumber partitions.
        assert!(!listed(true, 3, 2).stranded(None));
        // Mid-rebalance an empty assignment is normal.
        assert!(!listed(false, 1, 2).stranded(None));
        // A topic the broker does not know (yet) has no partition to own.
        assert!(!listed(true, 1, 0).stranded(None));
    }

    #[test]
    fn an_unlisted_group_is_stranded_only_when_a_backlog_stands_still() {
        let first = unlisted(&[(0, 10, 10), (1, 4, 9)]);
        // One look is not enough: the backlog may be moving.
        assert!(!first.stranded(None));
        // Partition 1 still waits at offset 4 with messages up to 9.
        assert!(unlisted(&[(0, 10, 12), (1, 4, 9)]).stranded(Some(&first)));
        // Someone is reading partition 1: it is owned.
        assert!(!unlisted(&[(0, 10, 10), (1, 7, 9)]).stranded(Some(&first)));
        // Nothing waits anywhere: nothing to rescue.
        let idle = unlisted(&[(0, 10, 10), (1, 9, 9)]);
        assert!(!idle.stranded(Some(&idle)));
    }
}
