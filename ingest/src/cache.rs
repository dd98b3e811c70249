//! Campaign state as ingest reads it from Redis: the full view for the API,
//! and a short-lived snapshot per campaign for the fast path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::aio::ConnectionManager;
use seckill_schemas::{
    CampaignSpec, CampaignState, CampaignView, KeyLayout, PrizeStock, StockView,
};

/// What the fast path needs to refuse a request without queueing it.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) starts_ms: i64,
    pub(crate) ends_ms: i64,
    pub(crate) closed: bool,
    pub(crate) draft: bool,
    pub(crate) available: u64,
    /// The definition, for the kind and the eligibility rule.
    pub(crate) spec: Arc<CampaignSpec>,
}

pub(crate) struct CampaignCache {
    ttl: Duration,
    // A std Mutex: held for a lookup or insert only, never across an await.
    entries: Mutex<HashMap<String, (Instant, Option<Snapshot>)>>,
}

impl CampaignCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The campaign's snapshot (`None` = no such campaign), at most `ttl` old.
    pub(crate) async fn get(
        &self,
        con: &mut ConnectionManager,
        keys: &KeyLayout,
        campaign_id: &str,
    ) -> Result<Option<Snapshot>, redis::RedisError> {
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, snap)) = entries.get(campaign_id) {
                if at.elapsed() < self.ttl {
                    return Ok(snap.clone());
                }
            }
        }
        let k = keys.campaign(campaign_id);
        let (meta, available): (
            (Option<String>, Option<String>, Option<String>),
            Option<u64>,
        ) = redis::pipe()
            .hmget(&k.meta, &["def", "closed", "draft"])
            .hget(&k.stock, "available")
            .query_async(con)
            .await?;
        let (def, closed, draft) = meta;
        let snap = def
            .and_then(|d| serde_json::from_str::<CampaignSpec>(&d).ok())
            .map(|spec| Snapshot {
                starts_ms: spec.starts_at.timestamp_millis(),
                ends_ms: spec.ends_at.timestamp_millis(),
                closed: closed.as_deref() == Some("1"),
                draft: draft.as_deref() == Some("1"),
                available: available.unwrap_or(0),
                spec: Arc::new(spec),
            });
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 100_000 {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(campaign_id.to_owned(), (Instant::now(), snap.clone()));
        Ok(snap)
    }
}

/// State by time and flags, as of `now_ms`.
pub(crate) fn state_at(
    starts_ms: i64,
    ends_ms: i64,
    closed: bool,
    draft: bool,
    now_ms: i64,
) -> CampaignState {
    if draft && !closed {
        CampaignState::Draft
    } else if closed || now_ms >= ends_ms {
        CampaignState::Closed
    } else if now_ms < starts_ms {
        CampaignState::Scheduled
    } else {
        CampaignState::Active
    }
}

/// The stored definition of a campaign, if it exists.
pub(crate) async fn read_definition(
    con: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
) -> Result<Option<String>, redis::RedisError> {
    redis::cmd("HGET")
        .arg(keys.campaign(campaign_id).meta)
        .arg("def")
        .query_async(con)
        .await
}

/// The full view of a campaign, if it exists.
pub(crate) async fn read_view(
    con: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
) -> Result<Option<CampaignView>, redis::RedisError> {
    let k = keys.campaign(campaign_id);
    let ((def, closed, draft), stock, prizes): (
        (Option<String>, Option<String>, Option<String>),
        HashMap<String, u64>,
        HashMap<String, u64>,
    ) = redis::pipe()
        .hmget(&k.meta, &["def", "closed", "draft"])
        .hgetall(&k.stock)
        .hgetall(&k.prizes)
        .query_async(con)
        .await?;
    let Some(spec) = def.and_then(|d| serde_json::from_str::<CampaignSpec>(&d).ok()) else {
        return Ok(None);
    };
    let get = |f: &str| stock.get(f).copied().unwrap_or(0);
    let prize_stock = spec
        .draw_table()
        .into_iter()
        .map(|p| PrizeStock {
            total: prizes.get(&format!("{}:total", p.id)).copied().unwrap_or(0),
            available: prizes.get(&p.id).copied().unwrap_or(0),
            id: p.id,
            name: p.name,
        })
        .collect();
    Ok(Some(CampaignView {
        state: state_at(
            spec.starts_at.timestamp_millis(),
            spec.ends_at.timestamp_millis(),
            closed.as_deref() == Some("1"),
            draft.as_deref() == Some("1"),
            Utc::now().timestamp_millis(),
        ),
        stock: StockView {
            total: get("total"),
            available: get("available"),
            reserved: get("reserved"),
            paid: get("paid"),
        },
        id: spec.id.clone(),
        name: spec.name.clone(),
        kind: spec.kind,
        per_user_limit: spec.per_user_limit,
        starts_at: spec.starts_at,
        ends_at: spec.ends_at,
        payment_timeout_secs: spec.payment_timeout_secs,
        price: spec.price,
        prizes: prize_stock,
        definition: spec,
    }))
}
