//! Reads the processors' lookups (see `KeyLayout::lookup`): a request's
//! result or an order's campaign, found without knowing the campaign.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use seckill_schemas::state::{LookupKind, LookupWindows};
use seckill_schemas::KeyLayout;

/// The processors' default time to live of lookups, used until one has
/// published its own (`SECKILL_DECISION_TTL_SECS`).
const DEFAULT_TTL_SECS: u64 = 86_400;
/// How long a published time to live is trusted before it is read again.
const TTL_REFRESH: Duration = Duration::from_secs(60);

/// Published time to live per key prefix, and when it was read. A std
/// Mutex: held for a map operation only, never across an await.
static TTLS: Mutex<Option<HashMap<String, (u64, Instant)>>> = Mutex::new(None);

async fn windows(
    con: &mut ConnectionManager,
    keys: &KeyLayout,
) -> Result<LookupWindows, redis::RedisError> {
    let key = keys.lookup_ttl();
    {
        let cached = TTLS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((secs, at)) = cached.as_ref().and_then(|m| m.get(&key)) {
            if at.elapsed() < TTL_REFRESH {
                return Ok(LookupWindows::new(*secs));
            }
        }
    }
    let published: Option<u64> = redis::cmd("GET").arg(&key).query_async(con).await?;
    let secs = published.unwrap_or(DEFAULT_TTL_SECS);
    TTLS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key, (secs, Instant::now()));
    Ok(LookupWindows::new(secs))
}

/// The lookup of `kind` for `id`, newest window first.
pub(crate) async fn read(
    con: &mut ConnectionManager,
    keys: &KeyLayout,
    kind: LookupKind,
    id: &str,
) -> Result<Option<String>, redis::RedisError> {
    let windows = windows(con, keys).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut pipe = redis::pipe();
    for w in windows.to_read(now) {
        pipe.hget(keys.lookup(kind, id, w), id);
    }
    let found: Vec<Option<String>> = pipe.query_async(con).await?;
    Ok(found.into_iter().flatten().next())
}
