//! The expiry sweeper. Once per interval, the processor that owns partition
//! 0 of the requests topic (exactly one member of the group) looks for
//! campaigns with reservations past their deadline (by Redis time) and
//! queues an `expire_due` command for each, keyed by campaign. The command is
//! decided like any request, by the campaign's own processor and in order
//! with its purchases and payments, so a pay racing an expiry has one winner.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use seckill_kafka::KafkaConsumer;
use tokio_util::sync::CancellationToken;

use seckill_schemas::{ExpireDue, RequestEvent, SCHEMA_VERSION};

use crate::internal_events;
use crate::worker::Worker;

pub(crate) async fn run(
    worker: Arc<Worker>,
    consumer: Arc<KafkaConsumer>,
    cancel: CancellationToken,
) {
    let interval = Duration::from_millis(worker.config().expiry_interval_ms.max(50));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let topic = &worker.config().topics.requests;
        let leader = consumer
            .assignment()
            .map(|a| a.find_partition(topic, 0).is_some())
            .unwrap_or(false);
        if !leader {
            continue;
        }
        if let Err(e) = sweep_once(&worker).await {
            internal_events::step_failed("expiry_sweep", &e);
        }
    }
}

async fn sweep_once(worker: &Worker) -> Result<(), redis::RedisError> {
    let mut con = worker.redis();
    let keys = worker.keys();
    let campaigns: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.campaigns())
        .query_async(&mut con)
        .await?;
    if campaigns.is_empty() {
        return Ok(());
    }
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut con).await?;
    let now_ms = secs * 1000 + micros / 1000;
    let mut pipe = redis::pipe();
    for c in &campaigns {
        pipe.cmd("ZRANGEBYSCORE")
            .arg(keys.campaign(c).deadlines)
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(1);
    }
    let due: Vec<Vec<String>> = pipe.query_async(&mut con).await?;
    for (campaign_id, first) in campaigns.iter().zip(due) {
        if first.is_empty() {
            continue;
        }
        let event = RequestEvent::ExpireDue(ExpireDue {
            schema_version: SCHEMA_VERSION,
            // Expiry commands are not recorded by id; this one only has to
            // be readable in logs.
            request_id: format!("expire-{campaign_id}-{now_ms}"),
            campaign_id: campaign_id.clone(),
        });
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        let record = FutureRecord::to(&worker.config().topics.requests)
            .key(campaign_id.as_str())
            .payload(&payload);
        if let Err((e, _)) = worker.producer().send(record, Duration::from_secs(1)).await {
            // The next sweep asks again.
            internal_events::step_failed("expiry_queue", &e);
        }
    }
    Ok(())
}
