//! The expiry sweeper. Once per interval, the processor that owns partition
//! 0 of the requests topic (exactly one member of the group) looks for
//! campaigns with reservations past their deadline (by Redis time) and
//! queues an `expire_due` command for each, keyed by campaign. The command is
//! decided like any request, by the campaign's own processor and in order
//! with its purchases and payments, so a pay racing an expiry has one winner.
//!
//! The command's answer (the orders it expired) is recorded under its
//! request id like any other, so a redelivery after a lost reply emits the
//! same `expired` events instead of finding nothing due.
//!
//! The same command retires a campaign whose window ended without a close
//! and without any request since: the decision script gives a retired
//! campaign's records their retention TTL in every call, and a campaign
//! nobody writes to any more would otherwise keep them forever.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use seckill_kafka::KafkaConsumer;
use tokio_util::sync::CancellationToken;

use seckill_schemas::state::meta;
use seckill_schemas::{split_key, ExpireDue, RequestEvent, SCHEMA_VERSION};

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
    let unretired = unretired(&mut con, keys, &campaigns, now_ms).await?;
    for ((campaign_id, first), unretired) in campaigns.iter().zip(due).zip(unretired) {
        if first.is_empty() && !unretired {
            continue;
        }
        // A member is a campaign's key: each stock bucket is swept, under
        // its own key, like a campaign (see seckill_schemas::buckets).
        let base = split_key(campaign_id).map_or(campaign_id.as_str(), |(id, _)| id);
        let event = RequestEvent::ExpireDue(ExpireDue {
            schema_version: SCHEMA_VERSION,
            // Recorded under this id: a redelivery of this message repeats
            // its answer. Another sweep gets another id (a sweep in the
            // same millisecond would repeat this answer, and the next
            // sweep expires what it left).
            request_id: format!("expire-{campaign_id}-{now_ms}"),
            campaign_id: base.to_owned(),
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

/// Per campaign: whether it is retired (closed, or its window over) while
/// its records still carry no TTL, i.e. no decision call ran since.
async fn unretired(
    con: &mut redis::aio::ConnectionManager,
    keys: &seckill_schemas::KeyLayout,
    campaigns: &[String],
    now_ms: i64,
) -> Result<Vec<bool>, redis::RedisError> {
    let mut pipe = redis::pipe();
    for c in campaigns {
        pipe.cmd("HMGET")
            .arg(keys.campaign(c).meta)
            .arg(meta::ENDS_AT)
            .arg(meta::CLOSED);
    }
    let metas: Vec<(Option<i64>, Option<String>)> = pipe.query_async(con).await?;
    let retired: Vec<bool> = metas
        .iter()
        .map(|(end, closed)| match end {
            Some(end) => *end <= now_ms || closed.as_deref() == Some(meta::flag(true)),
            None => false,
        })
        .collect();
    let mut pipe = redis::pipe();
    let mut any = false;
    for (c, _) in campaigns.iter().zip(&retired).filter(|(_, r)| **r) {
        // The script writes the request records in every call that decides
        // anything, so their TTL says whether one ran since retirement.
        pipe.cmd("PTTL").arg(keys.campaign(c).requests);
        any = true;
    }
    if !any {
        return Ok(vec![false; campaigns.len()]);
    }
    let mut ttls = pipe.query_async::<Vec<i64>>(con).await?.into_iter();
    Ok(retired
        .into_iter()
        // -1: the key exists and has no TTL yet.
        .map(|r| r && ttls.next() == Some(-1))
        .collect())
}
