//! Reading a topic from one offset to the end it has now: what the ops
//! tools (DLQ, reconcile) do.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use seckill_kafka::KafkaConsumer;

use seckill_kafka::KafkaSettings;

/// Partitions of `topic` with their (low, high) watermarks.
pub fn watermarks(consumer: &KafkaConsumer, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {topic} (is the broker running?)"))?;
    let mut out = Vec::new();
    for t in md.topics() {
        if t.partitions().is_empty() {
            bail!("topic {topic} does not exist; run `seckill topics create`");
        }
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            out.push((p.id(), low, high));
        }
    }
    Ok(out)
}

/// Reads each partition from its start offset (`start(partition, low)`,
/// never below `low`) to its end, in order. The end is where the broker
/// says the partition ends (partition EOF), not the high watermark: some
/// Kafka-compatible brokers report a watermark that stops short of the last
/// record batch. `consumer` must come from [`KafkaSettings::reader`].
pub async fn read_range(
    consumer: &KafkaConsumer,
    topic: &str,
    start: impl Fn(i32, i64) -> i64,
    mut each: impl FnMut(OwnedMessage) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    let mut remaining: BTreeMap<i32, ()> = BTreeMap::new();
    for (p, low, _) in watermarks(consumer, topic)? {
        tpl.add_partition_offset(topic, p, Offset::Offset(start(p, low).max(low)))?;
        remaining.insert(p, ());
    }
    consumer.assign(&tpl)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !remaining.is_empty() {
        let next = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .with_context(|| format!("reading {topic} took over 120 s; is the broker healthy?"))?;
        match next {
            Ok(m) => {
                if remaining.contains_key(&m.partition()) && !each(m.detach())? {
                    return Ok(());
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                remaining.remove(&p);
            }
            Err(e) => bail!("reading {topic}: {e}"),
        }
    }
    Ok(())
}

pub async fn read_all(settings: &KafkaSettings, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer = settings.reader(&format!("{topic}.reader-{}", uuid::Uuid::new_v4()))?;
    let mut all = Vec::new();
    read_range(
        &consumer,
        topic,
        |_, low| low,
        |m| {
            all.push(m);
            Ok(true)
        },
    )
    .await?;
    Ok(all)
}
