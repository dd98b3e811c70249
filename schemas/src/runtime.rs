//! Kafka plumbing shared by every role: client settings, topic creation,
//! batch reads, offset bookkeeping and dead-letter publishing.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::Topics;

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
    pub fn group_consumer(&self, group_id: &str) -> Result<StreamConsumer, KafkaError> {
        let heartbeat = (self.session_timeout_ms / 3).max(100);
        self.base()
            .set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "200")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", heartbeat.to_string())
            .set("fetch.wait.max.ms", "5")
            .set("fetch.min.bytes", "1")
            .set("enable.partition.eof", "false")
            .create()
    }

    /// A consumer that is assigned partitions by hand and never commits
    /// (listeners, tools). librdkafka wants a group id even so.
    pub fn plain_consumer(&self, group_id: &str) -> Result<StreamConsumer, KafkaError> {
        self.base()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "5")
            .set("enable.partition.eof", "false")
            .create()
    }
}

/// Creates the deployment's topics with explicit partition counts; topics
/// that exist already are left as they are.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &Topics,
    partitions: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = settings.base().create()?;
    let wanted = [
        (&topics.requests, partitions),
        (&topics.orders, partitions),
        (&topics.requests_dlq, 1),
        (&topics.orders_dlq, 1),
        (&topics.fulfilment, partitions),
    ];
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(name, p)| NewTopic::new(name.as_str(), *p, TopicReplication::Fixed(1)))
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

/// Reads up to `max` messages: waits for the first one as long as it takes
/// (or until `cancel`), then at most `max_wait` for the rest. Returns an
/// empty batch only when cancelled.
pub async fn recv_batch(
    consumer: &StreamConsumer,
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
pub fn store_done(consumer: &StreamConsumer, messages: &[OwnedMessage]) {
    if messages.is_empty() {
        return;
    }
    if let Err(e) = consumer.store_offsets(&next_offsets(messages)) {
        tracing::warn!(error = %e, "offsets not stored (partition revoked?); they will be redelivered");
    }
}

/// Header names on dead-letter messages.
pub mod headers {
    pub const ERROR_CLASS: &str = "seckill-error-class";
    pub const ERROR: &str = "seckill-error";
    pub const ORIGINAL_TOPIC: &str = "seckill-original-topic";
    pub const ORIGINAL_PARTITION: &str = "seckill-original-partition";
    pub const ORIGINAL_OFFSET: &str = "seckill-original-offset";
    pub const ORIGINAL_TIMESTAMP: &str = "seckill-original-timestamp";
    pub const FAILED_AT: &str = "seckill-failed-at";
}

/// Reads a header as text.
pub fn header_str<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let hs = message.headers()?;
    hs.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Publishes `message` unchanged (key and payload) to `dlq_topic` with
/// headers that say where it came from and why it failed, and waits for the
/// broker's acknowledgement.
pub async fn dead_letter(
    producer: &FutureProducer,
    dlq_topic: &str,
    message: &OwnedMessage,
    error_class: &str,
    error: &str,
) -> Result<(), KafkaError> {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let timestamp = message.timestamp().to_millis().unwrap_or(0).to_string();
    let failed_at = crate::now_ms().to_string();
    let hs = OwnedHeaders::new()
        .insert(Header {
            key: headers::ERROR_CLASS,
            value: Some(error_class),
        })
        .insert(Header {
            key: headers::ERROR,
            value: Some(error),
        })
        .insert(Header {
            key: headers::ORIGINAL_TOPIC,
            value: Some(message.topic()),
        })
        .insert(Header {
            key: headers::ORIGINAL_PARTITION,
            value: Some(&partition),
        })
        .insert(Header {
            key: headers::ORIGINAL_OFFSET,
            value: Some(&offset),
        })
        .insert(Header {
            key: headers::ORIGINAL_TIMESTAMP,
            value: Some(&timestamp),
        })
        .insert(Header {
            key: headers::FAILED_AT,
            value: Some(&failed_at),
        });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(hs);
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
