//! The decision collector: reads the orders topic from its end while the
//! bench runs and keeps, per request id, the first decision announced and
//! when it was announced (the message's timestamp, wall-clock ms).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use seckill_cli::check::DecisionRecord;
use seckill_schemas::{now_ms, OrderEvent};

use crate::args::KafkaArgs;

/// What the collector has seen, by request id.
#[derive(Default)]
pub(super) struct Seen {
    /// The first decision announced for each request id, and the wall-clock
    /// ms it was announced at (the orders message's timestamp).
    pub(super) decisions: HashMap<String, (DecisionRecord, i64)>,
    /// Request ids announced with two different outcomes.
    pub(super) conflicting: HashSet<String>,
    pub(super) first_decision: Option<Instant>,
    pub(super) last_decision: Option<Instant>,
}

/// The collector's state, shared with the bench. A std mutex, held only
/// for a map update or a count, never across an await.
pub(super) type Shared = Arc<Mutex<Seen>>;

pub(super) fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts reading the orders topic from its current end, recording every
/// decision about a campaign whose id starts with `run_id`.
pub(super) async fn start(
    kafka: &KafkaArgs,
    run_id: &str,
    seen: Shared,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let settings = kafka.settings();
    let topic = kafka.topics().orders;
    let consumer = settings.plain_consumer(&format!("{run_id}-collector"))?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {topic} from {}", settings.brokers))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(10))?;
            tpl.add_partition_offset(&topic, p.id(), Offset::Offset(high))?;
        }
    }
    consumer.assign(&tpl)?;
    let prefix = run_id.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            let Ok(m) = consumer.recv().await else {
                continue;
            };
            let Some(Ok(event)) = m.payload().map(OrderEvent::from_json) else {
                continue;
            };
            let Some(d) = event.decision() else { continue };
            if !d.campaign_id.starts_with(&prefix) {
                continue;
            }
            // When the processor produced it; without a timestamp, now (an
            // upper bound: the bench read it no earlier than it was made).
            let announced_ms = m.timestamp().to_millis().unwrap_or_else(now_ms);
            let record = DecisionRecord::from(&d);
            let mut s = lock(&seen);
            let now = Instant::now();
            s.first_decision.get_or_insert(now);
            s.last_decision = Some(now);
            match s.decisions.get(&d.request_id) {
                Some((prev, _)) if *prev != record => {
                    s.conflicting.insert(d.request_id.clone());
                }
                Some(_) => {}
                None => {
                    s.decisions
                        .insert(d.request_id.clone(), (record, announced_ms));
                }
            }
        }
    }))
}
