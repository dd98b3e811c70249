//! Writing a campaign's whole Redis state at once, for repairs. The records
//! in the image are encoded with `seckill_schemas::state`, as `decide.lua`
//! reads and writes them.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use serde::Serialize;

use seckill_schemas::state::meta;
use seckill_schemas::{CampaignSpec, KeyLayout};

use crate::decide::{kind_name, strategy_name, table_rows};

const SCRIPT: &str = include_str!("restore.lua");

/// A campaign's Redis state, field by field.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CampaignImage {
    pub meta: BTreeMap<String, String>,
    pub stock: BTreeMap<String, String>,
    pub users: BTreeMap<String, String>,
    pub requests: BTreeMap<String, String>,
    pub orders: BTreeMap<String, String>,
    pub attempts: BTreeMap<String, String>,
    pub prizes: BTreeMap<String, String>,
    pub deadlines: BTreeMap<String, i64>,
}

/// The meta hash `decide.lua` writes when it creates `spec`.
pub fn meta_fields(
    spec: &CampaignSpec,
    closed: bool,
    draft: bool,
    created_at_ms: i64,
) -> BTreeMap<String, String> {
    [
        (
            meta::DEFINITION,
            serde_json::to_string(spec).unwrap_or_default(),
        ),
        (meta::KIND, kind_name(spec).to_owned()),
        (meta::PER_USER_LIMIT, spec.per_user_limit.to_string()),
        (
            meta::STARTS_AT,
            spec.starts_at.timestamp_millis().to_string(),
        ),
        (meta::ENDS_AT, spec.ends_at.timestamp_millis().to_string()),
        (
            meta::PAYMENT_TIMEOUT_SECS,
            spec.payment_timeout_secs.to_string(),
        ),
        (meta::PRICE, spec.price.to_string()),
        (meta::CLOSED, meta::flag(closed).to_owned()),
        (meta::DRAFT, meta::flag(draft).to_owned()),
        (
            meta::MAX_ATTEMPTS,
            spec.max_attempts_per_user.unwrap_or(0).to_string(),
        ),
        (meta::STRATEGY, strategy_name(spec).to_owned()),
        (
            meta::DRAW_TABLE,
            serde_json::to_string(&table_rows(spec)).unwrap_or_default(),
        ),
        (meta::CREATED_AT, created_at_ms.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Replaces the campaign's Redis state with `image`, atomically, while the
/// repair fence `fence_token` holds (its processor has reached it); this
/// lifts the fence. Fails, writing nothing, when the fence no longer holds.
pub async fn restore(
    con: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
    image: &CampaignImage,
    fence_token: &str,
) -> Result<(), redis::RedisError> {
    let k = keys.campaign(campaign_id);
    let arg = serde_json::to_string(image).unwrap_or_default();
    let script = redis::Script::new(SCRIPT);
    let mut call = script.prepare_invoke();
    for key in k.script_keys() {
        call.key(key);
    }
    let _: i64 = call.arg(arg).arg(fence_token).invoke_async(con).await?;
    let _: i64 = redis::cmd("SADD")
        .arg(keys.campaigns())
        .arg(campaign_id)
        .query_async(con)
        .await?;
    Ok(())
}
