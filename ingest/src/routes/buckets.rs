//! Ingest's side of stock buckets (see `seckill_schemas::buckets`): which
//! key a request goes out under, the automatic choice of a new campaign's
//! buckets, and the fan-out of a campaign's create and admin commands to
//! every bucket, each signed for its own bucket.
//!
//! Routing here is an optimisation, never what correctness rests on: a
//! purchase sent to another bucket than its user's (the definition not
//! read yet, an upstream service keying by the bare campaign id) is
//! forwarded by the processors before anything is decided.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;

use seckill_schemas::{
    bucket_key, bucket_of, split_key, BucketPlan, CampaignAction, CampaignApplied, CampaignOutcome,
    CampaignSpec, RefusalReason, RequestEvent, UpsertCampaign,
};

use super::campaigns::{read_result, view_response};
use super::queue::enqueue;
use crate::cache::read_definition;
use crate::problem::Problem;
use crate::state::App;

/// How long a fan-out waits for every bucket to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(10);

fn redis_down(e: redis::RedisError) -> Problem {
    Problem::unavailable(format!("Redis unavailable: {e}")).retry_after(1)
}

/// The stock bucket ingest sends `event` to: a purchase goes to its
/// user's bucket, by the campaign's definition as last read (bucket 0
/// when it was not read yet); anything else to bucket 0 (commands for the
/// other buckets are sent with their bucket named, see below).
pub(crate) fn route(app: &App, event: &RequestEvent) -> u32 {
    match event {
        RequestEvent::PurchaseRequested(p) => app
            .cache
            .definition(&p.campaign_id)
            .map_or(0, |spec| bucket_of(&p.user_id, spec.bucket_count())),
        _ => 0,
    }
}

/// The definition of `campaign_id`, from the cache or else from Redis.
async fn definition(app: &App, campaign_id: &str) -> Option<std::sync::Arc<CampaignSpec>> {
    if let Some(spec) = app.cache.definition(campaign_id) {
        return Some(spec);
    }
    let mut con = app.redis.clone();
    app.cache
        .get(&mut con, &app.keys, campaign_id)
        .await
        .ok()
        .flatten()
        .map(|s| s.spec)
}

/// The `requests` hash that holds the recorded result `value` of one of
/// `campaign_id`'s requests: a purchase decision's is its user's bucket's,
/// a command result's the bucket it names (absent: bucket 0).
pub(crate) async fn requests_key(
    app: &App,
    campaign_id: &str,
    value: &serde_json::Value,
) -> String {
    let named = value
        .get("bucket")
        .and_then(serde_json::Value::as_u64)
        .and_then(|b| u32::try_from(b).ok());
    let bucket = match (named, value.get("user_id").and_then(|u| u.as_str())) {
        (Some(b), _) => b,
        (None, Some(user)) => definition(app, campaign_id)
            .await
            .map_or(0, |s| bucket_of(user, s.bucket_count())),
        (None, None) => 0,
    };
    app.keys.bucket(campaign_id, bucket).requests
}

/// The stock bucket of `user_id`'s purchases in `campaign_id` (0 for a
/// campaign of one bucket, or one that does not exist).
pub(crate) async fn user_bucket(app: &App, campaign_id: &str, user_id: &str) -> u32 {
    definition(app, campaign_id)
        .await
        .map_or(0, |s| bucket_of(user_id, s.bucket_count()))
}

/// The key of the bucket that holds `user_id`'s orders of `campaign_id`.
pub(crate) async fn order_key(app: &App, campaign_id: &str, user_id: &str) -> String {
    let count = definition(app, campaign_id)
        .await
        .map_or(1, |s| s.bucket_count());
    bucket_key(campaign_id, bucket_of(user_id, count))
}

/// Splits an order's campaign key into the campaign id and its bucket.
pub(crate) fn split_order_key(key: &str) -> Result<(String, u32), Problem> {
    split_key(key)
        .map(|(id, b)| (id.to_owned(), b))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                format!("the order's campaign key {key:?} does not read"),
            )
        })
}

/// The requests topic's partition count, read from the broker.
async fn partitions(app: &App) -> Option<i32> {
    let producer = app.producer.clone();
    let topic = app.config.topics.requests.clone();
    tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        seckill_kafka::partition_count(producer.client(), &topic, Duration::from_secs(5))
    })
    .await
    .ok()
    .flatten()
}

/// Fills in the buckets of a sale created without them, from its
/// `expected_requests_per_sec`, the configured rate per bucket, the
/// requests topic's partitions and its stock (`BucketPlan`). A campaign
/// that exists already (`existing`, its stored definition) keeps the
/// buckets it was created with, so sending the same body again is the
/// same definition even if the configuration changed since. One bucket
/// leaves the field unset: the definition reads as it always did.
pub(crate) async fn choose(
    app: &App,
    spec: &mut CampaignSpec,
    existing: Option<&str>,
) -> Result<(), Problem> {
    if spec.buckets.is_some() || spec.kind != seckill_schemas::CampaignKind::Sale {
        return Ok(());
    }
    if let Some(old) = existing.and_then(|d| serde_json::from_str::<CampaignSpec>(d).ok()) {
        spec.buckets = old.buckets;
        return Ok(());
    }
    if spec.expected_requests_per_sec.is_none() {
        return Ok(());
    }
    let Some(partitions) = partitions(app).await else {
        return Err(Problem::unavailable(
            "could not read the requests topic's partition count to choose the campaign's \
             stock buckets (is the broker up?); retry, or set `buckets` yourself",
        )
        .retry_after(1));
    };
    let count = BucketPlan {
        stock: spec.stock,
        expected_requests_per_sec: spec.expected_requests_per_sec,
        rate_per_bucket: app.config.buckets.rate_per_bucket,
        partitions: u32::try_from(partitions).unwrap_or(1),
        min_units_per_bucket: app.config.buckets.min_units_per_bucket,
    }
    .buckets();
    spec.buckets = (count > 1).then_some(count);
    Ok(())
}

/// The create of bucket `bucket`, from bucket 0's.
fn create_for(event: &RequestEvent, bucket: u32) -> RequestEvent {
    let mut e = event.clone();
    if let RequestEvent::UpsertCampaign(UpsertCampaign { request_id, .. }) = &mut e {
        *request_id = format!("{request_id}.{bucket}");
    }
    e
}

/// Queues the create of every bucket but 0, each acknowledged by the
/// broker. Sent before bucket 0's: ingest routes purchases to a bucket
/// only once bucket 0's definition is there, and by then each bucket's
/// create is ahead of them in its partition.
pub(crate) async fn create_siblings(
    app: &App,
    spec: &CampaignSpec,
    event: &RequestEvent,
) -> Result<(), Problem> {
    for b in 1..spec.bucket_count() {
        enqueue(app, &create_for(event, b), b).await?;
    }
    Ok(())
}

/// Buckets 1.. of `spec` that do not hold `ours` (its definition) yet.
async fn missing(app: &App, spec: &CampaignSpec, ours: &str) -> Result<Vec<u32>, Problem> {
    let mut con = app.redis.clone();
    let mut out = Vec::new();
    for b in 1..spec.bucket_count() {
        let def = read_definition(&mut con, &app.keys, &bucket_key(&spec.id, b))
            .await
            .map_err(redis_down)?;
        if def.as_deref() != Some(ours) {
            out.push(b);
        }
    }
    Ok(out)
}

/// Waits until every bucket of `spec` holds `ours` (503 past the wait).
pub(crate) async fn wait_created(
    app: &App,
    spec: &CampaignSpec,
    ours: &str,
) -> Result<(), Problem> {
    let deadline = Instant::now() + APPLY_WAIT;
    loop {
        let left = missing(app, spec, ours).await?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Problem::unavailable(format!(
                "campaign {:?} was created, but its stock buckets {left:?} were not within 10 s \
                 (are the processors running?); sending the same definition again is safe",
                spec.id
            ))
            .retry_after(2));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// For a campaign that exists: queues the create of every bucket that
/// lacks it (an earlier create stopped half-way) and waits for them.
pub(crate) async fn ensure_siblings(
    app: &App,
    spec: &CampaignSpec,
    ours: &str,
    event: &RequestEvent,
) -> Result<(), Problem> {
    for b in missing(app, spec, ours).await? {
        enqueue(app, &create_for(event, b), b).await?;
    }
    wait_created(app, spec, ours).await
}

/// Applies `action` to every bucket of a campaign of `count` buckets (an
/// add of stock split over them, remainder to the first), each as its own
/// command signed for its bucket, and answers with the campaign once every
/// bucket applied it.
pub(crate) async fn command_all(
    app: &App,
    id: &str,
    action: CampaignAction,
    count: u32,
) -> Result<Response, Problem> {
    let base = uuid::Uuid::new_v4().to_string();
    let mut sent = Vec::new();
    for b in 0..count {
        let action = match &action {
            CampaignAction::AddStock { quantity, prize_id } => {
                let share = seckill_schemas::buckets::shares(*quantity, count)[b as usize];
                if share == 0 {
                    continue;
                }
                CampaignAction::AddStock {
                    quantity: share,
                    prize_id: prize_id.clone(),
                }
            }
            other => other.clone(),
        };
        let request_id = if b == 0 {
            base.clone()
        } else {
            format!("{base}.{b}")
        };
        let event = RequestEvent::CampaignCommand(seckill_schemas::CampaignCommand {
            schema_version: seckill_schemas::SCHEMA_VERSION,
            request_id: request_id.clone(),
            campaign_id: id.to_owned(),
            action,
            requested_at_ms: Some(seckill_schemas::now_ms()),
            auth: None,
        });
        enqueue(app, &event, b).await?;
        sent.push((b, request_id));
    }
    let deadline = Instant::now() + APPLY_WAIT;
    let mut results: Vec<Option<CampaignApplied>> = vec![None; sent.len()];
    loop {
        for ((_, rid), slot) in sent.iter().zip(results.iter_mut()) {
            if slot.is_none() {
                *slot = read_result::<CampaignApplied>(app, rid).await;
            }
        }
        if results.iter().all(Option::is_some) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(refused) = results
        .iter()
        .flatten()
        .find(|a| a.outcome != CampaignOutcome::Applied)
    {
        return Err(Problem::conflict(format!(
            "{} refused by stock bucket {}: {}",
            refused.action,
            refused.bucket.unwrap_or(0),
            refused.reason.map_or("refused", RefusalReason::as_str)
        )));
    }
    let pending: Vec<u32> = sent
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_none())
        .map(|((b, _), _)| *b)
        .collect();
    if !pending.is_empty() {
        return Err(Problem::unavailable(format!(
            "the command was queued to every stock bucket but buckets {pending:?} did not apply it \
             within 10 s (are the processors running?)"
        ))
        .request_id(base)
        .retry_after(2));
    }
    Ok(view_response(app, id, StatusCode::OK).await)
}
