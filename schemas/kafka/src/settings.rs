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
