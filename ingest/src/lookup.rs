//! Reads the processors' lookups (see `KeyLayout::lookup`): a request's
//! result or an order's campaign, found without knowing the campaign.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The windows the processors write lookups into.
pub(crate) async fn windows(
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

/// The windows to read now.
fn to_read(windows: LookupWindows) -> [u64; 3] {
    windows.to_read(LookupWindows::now_secs())
}

/// Adds the reads of the lookup of `kind` for `id` to `pipe`: one reply
/// per window, newest first, then the key an older processor wrote it
/// under (see [`first`]).
pub(crate) fn queue_reads(
    pipe: &mut redis::Pipeline,
    keys: &KeyLayout,
    windows: LookupWindows,
    kind: LookupKind,
    id: &str,
) {
    queue_windowed_reads(
        pipe,
        windows,
        id,
        |w| keys.lookup(kind, id, w),
        keys.legacy_lookup(kind, id),
    );
}

/// Adds the reads of field `id` of a windowed hash to `pipe`: the hash
/// `hash(window)` of each window to read now, newest first, then the key
/// `legacy` it had before the hashes. [`first`] picks the answer.
pub(crate) fn queue_windowed_reads(
    pipe: &mut redis::Pipeline,
    windows: LookupWindows,
    id: &str,
    hash: impl Fn(u64) -> String,
    legacy: String,
) {
    for w in to_read(windows) {
        pipe.hget(hash(w), id);
    }
    pipe.get(legacy);
}

/// The newest of the replies [`queue_windowed_reads`] asked for.
pub(crate) fn first(found: [Option<String>; 4]) -> Option<String> {
    found.into_iter().flatten().next()
}

/// The lookup of `kind` for `id`.
pub(crate) async fn read(
    con: &mut ConnectionManager,
    keys: &KeyLayout,
    kind: LookupKind,
    id: &str,
) -> Result<Option<String>, redis::RedisError> {
    let windows = windows(con, keys).await?;
    let mut pipe = redis::pipe();
    queue_reads(&mut pipe, keys, windows, kind, id);
    type Found = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let (a, b, c, d): Found = pipe.query_async(con).await?;
    Ok(first([a, b, c, d]))
}
