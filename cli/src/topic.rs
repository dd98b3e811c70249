//! Reading a topic from one offset to the end it has now: what the ops
//! tools (DLQ, reconcile) do.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use seckill_schemas::runtime::KafkaSettings;

/// Partitions of `topic` with their (low, high) watermarks.
pub(crate) fn watermarks(
    consumer: &StreamConsumer,
    topic: &str,
) -> anyhow::Result<Vec<(i32, i64, i64)>> {
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
/// never below `low`) up to the high watermark taken now, in order.
pub(crate) async fn read_range(
    consumer: &StreamConsumer,
    topic: &str,
    start: impl Fn(i32, i64) -> i64,
    mut each: impl FnMut(OwnedMessage) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, low, high) in watermarks(consumer, topic)? {
        let from = start(p, low).max(low);
        if high > from {
            tpl.add_partition_offset(topic, p, Offset::Offset(from))?;
            remaining.insert(p, high);
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .with_context(|| format!("reading {topic} took over 60 s; is the broker healthy?"))?
            .with_context(|| format!("reading {topic}"))?
            .detach();
        let (p, off) = (m.partition(), m.offset());
        let Some(end) = remaining.get(&p).copied() else {
            continue;
        };
        if off + 1 >= end {
            remaining.remove(&p);
        }
        if off < end && !each(m)? {
            return Ok(());
        }
    }
    Ok(())
}

pub(crate) async fn read_all(
    settings: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer = settings.plain_consumer(&format!("{topic}.reader-{}", uuid::Uuid::new_v4()))?;
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
