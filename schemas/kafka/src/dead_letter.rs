//! Retry-tier and dead-letter messages: the headers that say where a
//! message came from and why it failed, and publishing it on.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

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
    /// On a request a processor forwarded to the partition its key maps to:
    /// `<partition>:<offset>` it was first produced at.
    pub const FORWARDED_FROM: &str = "seckill-forwarded-from";
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
    /// A command without a valid authenticator (see `seckill_schemas`
    /// `auth`): DLQ, and it changes nothing.
    Unauthenticated,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Unparseable => "unparseable",
            Self::Unauthenticated => "unauthenticated",
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
    let now = seckill_schemas::now_ms().to_string();
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
