//! Writing a campaign's whole Redis state at once, for repairs. The record
//! formats here are the ones `decide.lua` reads and writes.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use serde::Serialize;

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
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_owned(), v);
    };
    put("def", serde_json::to_string(spec).unwrap_or_default());
    put("kind", kind_name(spec).to_owned());
    put("limit", spec.per_user_limit.to_string());
    put("start", spec.starts_at.timestamp_millis().to_string());
    put("end", spec.ends_at.timestamp_millis().to_string());
    put("timeout", spec.payment_timeout_secs.to_string());
    put("price", spec.price.to_string());
    put("closed", if closed { "1" } else { "0" }.to_owned());
    put("draft", if draft { "1" } else { "0" }.to_owned());
    put(
        "max_att",
        spec.max_attempts_per_user.unwrap_or(0).to_string(),
    );
    put("strategy", strategy_name(spec).to_owned());
    put(
        "table",
        serde_json::to_string(&table_rows(spec)).unwrap_or_default(),
    );
    put("created_at", created_at_ms.to_string());
    m
}

/// An order as `decide.lua` stores it.
#[allow(clippy::too_many_arguments)]
pub fn encode_order(
    user: &str,
    quantity: u32,
    state: &str,
    expires_at_ms: i64,
    purchase_request_id: &str,
    price: u64,
    created_at_ms: i64,
    prize_id: Option<&str>,
) -> String {
    format!(
        "{user}|{quantity}|{state}|{expires_at_ms}|{purchase_request_id}|{price}|{created_at_ms}|{}",
        prize_id.unwrap_or("")
    )
}

/// A purchase decision as `decide.lua` records it under the request id.
#[allow(clippy::too_many_arguments)]
pub fn encode_decision(
    status: &str,
    reason: &str,
    order_id: Option<&str>,
    quantity: Option<u32>,
    decided_at_ms: i64,
    expires_at_ms: Option<i64>,
    price: Option<u64>,
    prize_id: Option<&str>,
    confirmed: bool,
) -> String {
    let opt = |v: Option<String>| v.unwrap_or_default();
    format!(
        "d|{status}|{reason}|{}|{}|{decided_at_ms}|{}|{}|{}|{}",
        order_id.unwrap_or(""),
        opt(quantity.map(|q| q.to_string())),
        opt(expires_at_ms.map(|e| e.to_string())),
        opt(price.map(|p| p.to_string())),
        prize_id.unwrap_or(""),
        if confirmed { "1" } else { "0" },
    )
}

/// Replaces the campaign's Redis state with `image`, atomically.
pub async fn restore(
    con: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
    image: &CampaignImage,
) -> Result<(), redis::RedisError> {
    let k = keys.campaign(campaign_id);
    let arg = serde_json::to_string(image).unwrap_or_default();
    let script = redis::Script::new(SCRIPT);
    let mut call = script.prepare_invoke();
    for key in k.script_keys() {
        call.key(key);
    }
    let _: i64 = call.arg(arg).invoke_async(con).await?;
    let _: i64 = redis::cmd("SADD")
        .arg(keys.campaigns())
        .arg(campaign_id)
        .query_async(con)
        .await?;
    Ok(())
}
