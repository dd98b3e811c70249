//! Kafka helpers: producing test traffic, reading whole topics and their
//! headers, and the decisions on the orders topic.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

use seckill_kafka::KafkaSettings;
use seckill_schemas::{Decision, OrderEvent};

use super::sale::new_request_id;
use super::Stack;

/// Whether the broker answers a metadata request (blocking client on the
/// blocking pool).
pub(crate) async fn metadata_ok(brokers: &str) -> Result<(), String> {
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("log_level", "3")
            .create()
            .map_err(|e| e.to_string())?;
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Partition count of `topic`, or an error while it does not exist.
pub(crate) async fn partition_count(settings: &KafkaSettings, topic: &str) -> Result<i32, String> {
    let brokers = settings.brokers.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("allow.auto.create.topics", "false")
            .set("log_level", "3")
            .create()
            .map_err(|e| e.to_string())?;
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| format!("topic {topic} not in metadata"))?;
        if let Some(err) = t.error() {
            return Err(format!("topic {topic}: {err:?}"));
        }
        match t.partitions().len() {
            0 => Err(format!("topic {topic} has no partitions")),
            n => Ok(n as i32),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The JSON of a `purchase_requested` event exactly as an upstream service
/// would produce it.
pub(crate) fn purchase_json(
    request_id: &str,
    campaign: &str,
    user: &str,
    quantity: u32,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "purchase_requested",
        "schema_version": 1,
        "request_id": request_id,
        "campaign_id": campaign,
        "user_id": user,
        "quantity": quantity,
    }))
    .expect("serialise purchase")
}

/// `n` purchase events for `cid` (one unit each), user `user(i)` for the
/// i-th: their request ids and the (key, payload) messages.
pub(crate) fn purchases(
    cid: &str,
    n: usize,
    user: impl Fn(usize) -> String,
) -> (Vec<String>, Vec<(String, Vec<u8>)>) {
    let ids: Vec<String> = (0..n).map(|_| new_request_id()).collect();
    let messages = ids
        .iter()
        .enumerate()
        .map(|(i, rid)| (cid.to_owned(), purchase_json(rid, cid, &user(i), 1)))
        .collect();
    (ids, messages)
}

/// An idempotent producer that waits for every acknowledgement.
#[derive(Clone)]
pub(crate) struct Producer {
    pub(crate) inner: FutureProducer,
}

impl Producer {
    pub(crate) fn new(settings: &KafkaSettings) -> Producer {
        Producer {
            inner: settings.producer(60_000).expect("create producer"),
        }
    }

    /// Produces one message and waits for the broker's acknowledgement.
    pub(crate) async fn send(&self, topic: &str, key: Option<&str>, payload: &[u8]) {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        self.inner
            .send(record, Duration::from_secs(60))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }

    /// Produces all messages (key, payload) at once and waits for every
    /// acknowledgement. Order per key is kept (idempotent producer).
    pub(crate) async fn send_all(&self, topic: &str, messages: &[(String, Vec<u8>)]) {
        let mut pending = Vec::with_capacity(messages.len());
        for (key, payload) in messages {
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
                .key(key.as_str())
                .payload(payload.as_slice());
            pending.push(self.inner.send(record, Duration::from_secs(60)));
        }
        for r in join_all(pending).await {
            if let Err((e, _)) = r {
                panic!("produce to {topic}: {e}");
            }
        }
    }
}

/// Produces `messages` (partition, key, payload) to exactly those
/// partitions of `topic`, keeping their order per partition.
pub(crate) async fn produce_exact(
    producer: &Producer,
    topic: &str,
    messages: &[(i32, Option<Vec<u8>>, Vec<u8>)],
) {
    for chunk in messages.chunks(2000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (p, key, payload) in chunk {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .partition(*p)
                .payload(payload.as_slice());
            if let Some(k) = key {
                record = record.key(k.as_slice());
            }
            pending.push(producer.inner.send(record, Duration::from_secs(60)));
        }
        for r in join_all(pending).await {
            if let Err((e, _)) = r {
                panic!("produce to {topic}: {e}");
            }
        }
    }
}

/// Reads `topic` from the beginning of every partition with a consumer that
/// is assigned the partitions by hand (no group, no commits). Returns once
/// at least `min` messages are in and none came for `idle`, or when
/// `timeout` passes (with what was read).
pub(crate) async fn consume_topic(
    settings: &KafkaSettings,
    topic: &str,
    min: usize,
    idle: Duration,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        match partition_count(settings, topic).await {
            Ok(n) => break n,
            Err(e) if Instant::now() >= deadline => panic!("cannot read {topic}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let consumer = settings
        .plain_consumer(&format!("e2e-reader-{}", super::token(8)))
        .expect("create reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("add partition");
    }
    consumer.assign(&tpl).expect("assign partitions");
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = if out.len() >= min {
            idle.min(deadline - now)
        } else {
            (deadline - now).min(Duration::from_secs(1))
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => {
                eprintln!("reading {topic}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) if out.len() >= min => break,
            Err(_) => {}
        }
    }
    out
}

/// The whole of `topic` on the stack's broker (at least `min` messages,
/// then until idle for 2 s; at most `timeout`), in partition and offset
/// order.
pub(crate) async fn read_topic(
    stack: &Stack,
    topic: &str,
    min: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let mut out = consume_topic(&stack.kafka(), topic, min, Duration::from_secs(2), timeout).await;
    out.sort_by_key(|m| (m.partition(), m.offset()));
    out
}

/// A message's payload as an order event, if it is one.
pub(crate) fn order_event(message: &OwnedMessage) -> Option<OrderEvent> {
    serde_json::from_slice(message.payload().unwrap_or_default()).ok()
}

/// A message's headers as text, by name (the last one of a name wins).
pub(crate) fn headers_of(m: &OwnedMessage) -> BTreeMap<String, String> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How often each header name occurs on a message (overwritten, never
/// appended, means once).
pub(crate) fn header_counts(m: &OwnedMessage) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            *out.entry(h.key.to_owned()).or_default() += 1;
        }
    }
    out
}

/// A header of a message as text.
pub(crate) fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let hs = message.headers()?;
    hs.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Everything on the orders topic, indexed by request id.
#[derive(Debug, Default)]
pub(crate) struct DecisionLog {
    /// Purchase decisions in topic order (per partition), by request id.
    pub(crate) by_request: HashMap<String, Vec<Decision>>,
    /// Messages that did not parse as order events.
    pub(crate) unparsed: Vec<String>,
    pub(crate) messages: usize,
}

impl DecisionLog {
    pub(crate) fn from_messages(messages: &[OwnedMessage]) -> DecisionLog {
        let mut log = DecisionLog {
            messages: messages.len(),
            ..DecisionLog::default()
        };
        for m in messages {
            let payload = m.payload().unwrap_or_default();
            match serde_json::from_slice::<OrderEvent>(payload) {
                Ok(e) => {
                    if let Some(d) = e.decision() {
                        log.by_request
                            .entry(d.request_id.clone())
                            .or_default()
                            .push(d);
                    }
                }
                Err(e) => log
                    .unparsed
                    .push(format!("{e}: {}", String::from_utf8_lossy(payload))),
            }
        }
        log
    }

    /// The first decision event of a request.
    pub(crate) fn first(&self, request_id: &str) -> Option<&Decision> {
        self.by_request.get(request_id).and_then(|v| v.first())
    }

    /// Every request id of `campaign` with its decision events.
    pub(crate) fn campaign<'a>(
        &'a self,
        campaign: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Vec<Decision>)> + 'a {
        self.by_request
            .iter()
            .filter(move |(_, ds)| ds.iter().any(|d| d.campaign_id == campaign))
    }
}

/// Reads the whole orders topic (at least `min` messages, then until idle
/// for 2 s; at most `timeout`).
pub(crate) async fn read_decisions(
    settings: &KafkaSettings,
    orders_topic: &str,
    min: usize,
    timeout: Duration,
) -> DecisionLog {
    let messages =
        consume_topic(settings, orders_topic, min, Duration::from_secs(2), timeout).await;
    DecisionLog::from_messages(&messages)
}
