//! Client settings every role shares: one place that says how producers,
//! group members, readers and admin clients talk to the broker.

use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::watchdog::watch_assignment;

/// Every consumer a role creates: librdkafka's own log lines and the
/// group's rebalances go to the role's log, so "which member holds which
/// partition" can be read off the logs during an incident.
pub type KafkaConsumer = StreamConsumer<RoleContext>;

/// The client context of [`KafkaConsumer`].
#[derive(Debug, Default)]
pub struct RoleContext {
    /// Checks where each newly assigned partition resumes (see
    /// [`crate::resume`]).
    pub(crate) resume: crate::resume::ResumeGuard,
}

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
                self.resume.assigned(tpl);
                tracing::info!(partitions = %list(tpl), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                self.resume.revoked(tpl);
                tracing::info!(partitions = %list(tpl), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

/// How to reach the broker; shared by every client a role creates.
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    /// `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group session timeout. A group (re)joins after roughly half
    /// of it, so tests keep it short.
    pub session_timeout_ms: u32,
    /// librdkafka properties set on every client after seckill's own, so
    /// they can override any of them (`security.protocol`,
    /// `sasl.mechanisms`, `ssl.ca.location`, ...).
    pub properties: Vec<(String, String)>,
    /// Static group membership (`group.instance.id`), e.g. the pod name: a
    /// member that restarts within the session timeout gets its partitions
    /// back without a rebalance of the whole group.
    pub instance_id: Option<String>,
    /// This process is the only member of every group it joins (`seckill
    /// all --solo`): it takes every partition by hand and commits without
    /// the group protocol, so no heartbeat or rebalance can stall it. For
    /// one process on one broker only: two solo processes on the same topics
    /// would both decide every campaign.
    pub solo: bool,
    /// How long the broker may hold a consumer's fetch when it has nothing
    /// new (`fetch.wait.max.ms`); `None` is [`FETCH_WAIT_MS`]. Raised for
    /// consumers whose messages wait seconds anyway (the retry tiers): tansu
    /// answers every fetch only after this wait, so an idle consumer at 5 ms
    /// costs the broker 200 fetches a second.
    pub fetch_wait_ms: Option<u32>,
}

/// The broker's longest hold of a fetch for the consumers on the
/// decision path (processors, sinks, listeners). Kafka answers a fetch as
/// soon as data arrives; tansu 0.6 always holds it this long, so it is
/// also the latency floor of each hop there.
pub const FETCH_WAIT_MS: u32 = 5;

/// Why a `key=value` librdkafka property could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Kafka property {0:?} must be KEY=VALUE, e.g. security.protocol=SASL_SSL")]
pub struct BadProperty(pub String);

/// The user's properties, set last so they win over seckill's defaults.
trait Own {
    fn own(&mut self, properties: &[(String, String)]) -> &mut Self;
}

impl Own for ClientConfig {
    fn own(&mut self, properties: &[(String, String)]) -> &mut Self {
        for (k, v) in properties {
            self.set(k, v);
        }
        self
    }
}

/// Reads one `key=value` librdkafka property.
pub fn parse_property(s: &str) -> Result<(String, String), BadProperty> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(BadProperty(s.to_owned())),
    }
}

impl KafkaSettings {
    /// The same settings for consumers that can wait `ms` for new messages.
    pub fn patient(&self, ms: u32) -> Self {
        Self {
            fetch_wait_ms: Some(ms),
            ..self.clone()
        }
    }

    fn fetch_wait(&self) -> String {
        self.fetch_wait_ms.unwrap_or(FETCH_WAIT_MS).to_string()
    }

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
    ///
    /// Keys are partitioned with murmur2, as the Java, Go and kafka-python
    /// clients do by default, so a campaign's key lands on the same
    /// partition whoever produces it.
    pub fn producer(&self, message_timeout_ms: u32) -> Result<FutureProducer, KafkaError> {
        let mut config = self.base();
        config
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", message_timeout_ms.to_string())
            .own(&self.properties)
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
        let mut config = self.base();
        config
            .set("group.id", group_id)
            // Incremental rebalances: a member joining or leaving moves only
            // the partitions that change owner; the others keep deciding.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("max.poll.interval.ms", max_poll.to_string())
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "200")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", heartbeat.to_string())
            .set("fetch.wait.max.ms", self.fetch_wait())
            .set("fetch.min.bytes", "1")
            .set("enable.partition.eof", "false");
        if let Some(id) = &self.instance_id {
            config.set("group.instance.id", id);
        }
        config
            .own(&self.properties)
            .create_with_context(RoleContext::default())
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
        if self.solo {
            assign_all(&consumer, topic)?;
            return Ok(consumer);
        }
        consumer.subscribe(&[topic])?;
        // The watchdog reads the group's offsets over a connection of its
        // own: a broker that drops a connection over a failed admin request
        // must not take the member's heartbeats with it.
        let probe = self.reader(group)?;
        watch_assignment(
            std::sync::Arc::clone(&consumer),
            probe,
            group.to_owned(),
            topic.to_owned(),
            Duration::from_millis(self.session_timeout_ms.into()),
            cancel.clone(),
        );
        Ok(consumer)
    }

    /// An admin client (topic creation, record deletion).
    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        self.base().own(&self.properties).create()
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
            .set("fetch.wait.max.ms", self.fetch_wait())
            .own(&self.properties)
            .create_with_context(RoleContext::default())
    }

    /// A consumer that is assigned partitions by hand and never commits
    /// (listeners, tools). librdkafka wants a group id even so.
    pub fn plain_consumer(&self, group_id: &str) -> Result<KafkaConsumer, KafkaError> {
        self.base()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", self.fetch_wait())
            .set("enable.partition.eof", "false")
            .own(&self.properties)
            .create_with_context(RoleContext::default())
    }
}

/// Takes every partition of `topic`, each from the group's committed
/// offset (the earliest one where the group has none).
fn assign_all(consumer: &KafkaConsumer, topic: &str) -> Result<(), KafkaError> {
    use rdkafka::consumer::Consumer;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Stored)?;
        }
    }
    if tpl.count() == 0 {
        return Err(KafkaError::Subscription(format!(
            "topic {topic} has no partitions; run `seckill topics create`"
        )));
    }
    consumer.assign(&tpl)?;
    consumer.context().resume.assigned(&tpl);
    tracing::info!(%topic, partitions = tpl.count(), "solo: every partition assigned by hand");
    Ok(())
}
