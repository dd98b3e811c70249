//! Campaign state as ingest reads it from Redis: the full view for the API,
//! and a short-lived snapshot per campaign for the fast path.
//!
//! Field names and record formats come from `seckill_schemas::state` (the
//! decision script is their only writer). A field that is there but does
//! not read is an error ([`ReadError::Record`]), never a guessed value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::aio::ConnectionManager;
use seckill_schemas::state::{meta, prizes, stock, RecordError, StockCounters};
use seckill_schemas::{
    CampaignKind, CampaignSpec, CampaignState, CampaignView, DrawSecret, KeyLayout, PrizeStock,
    StockView,
};

/// Why a campaign's state could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered, but a field holds what this build cannot read.
    #[error("campaign state unreadable: {0}")]
    Record(#[from] RecordError),
}

/// What the fast path needs to refuse a request without queueing it.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) starts_ms: i64,
    pub(crate) ends_ms: i64,
    pub(crate) closed: bool,
    pub(crate) draft: bool,
    /// Units available, every stock bucket's added up: a purchase may be
    /// answered sold out here only when no bucket could serve it (a bucket
    /// short of units borrows from its siblings).
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
    ) -> Result<Option<Snapshot>, ReadError> {
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, snap)) = entries.get(campaign_id) {
                if at.elapsed() < self.ttl {
                    return Ok(snap.clone());
                }
            }
        }
        let k = keys.campaign(campaign_id);
        let (head, stock_hash): (Head, HashMap<String, String>) = redis::pipe()
            .hmget(&k.meta, &HEAD_FIELDS)
            .hgetall(&k.stock)
            .query_async(con)
            .await?;
        let snap = match read_head(head)? {
            None => None,
            Some((spec, closed, draft)) => {
                let mut counters = vec![StockCounters::from_hash(&stock_hash)?];
                counters.extend(sibling_counters(con, keys, &spec).await?);
                let mut available = 0;
                for c in counters {
                    available += unsigned("stock", stock::AVAILABLE, c.available)?;
                }
                Some(Snapshot {
                    starts_ms: spec.starts_at.timestamp_millis(),
                    ends_ms: spec.ends_at.timestamp_millis(),
                    closed,
                    draft,
                    available,
                    spec: Arc::new(spec),
                })
            }
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 100_000 {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(campaign_id.to_owned(), (Instant::now(), snap.clone()));
        Ok(snap)
    }

    /// The campaign's definition as last read, however old: it never
    /// changes once created (for routing a purchase to its stock bucket
    /// without a Redis round trip; `None` when not read yet).
    pub(crate) fn definition(&self, campaign_id: &str) -> Option<Arc<CampaignSpec>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(campaign_id)
            .and_then(|(_, snap)| snap.as_ref())
            .map(|s| Arc::clone(&s.spec))
    }
}

/// The stock counters of a campaign's buckets 1.. (none for a campaign of
/// one bucket), by bucket number.
async fn sibling_counters(
    con: &mut ConnectionManager,
    keys: &KeyLayout,
    spec: &CampaignSpec,
) -> Result<Vec<StockCounters>, ReadError> {
    let count = spec.bucket_count();
    if count <= 1 {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for b in 1..count {
        pipe.hgetall(keys.bucket(&spec.id, b).stock);
    }
    let hashes: Vec<HashMap<String, String>> = pipe.query_async(con).await?;
    Ok(hashes
        .iter()
        .map(StockCounters::from_hash)
        .collect::<Result<_, _>>()?)
}

/// The meta fields every reader here needs, in the order of [`Head`].
const HEAD_FIELDS: [&str; 3] = [meta::DEFINITION, meta::CLOSED, meta::DRAFT];

/// Definition, closed, draft: the values of [`HEAD_FIELDS`].
type Head = (Option<String>, Option<String>, Option<String>);

/// The definition and flags (`closed`, `draft`), or `None` when the
/// campaign does not exist (no definition).
fn read_head(
    (def, closed, draft): Head,
) -> Result<Option<(CampaignSpec, bool, bool)>, RecordError> {
    let Some(def) = def else {
        return Ok(None);
    };
    let spec = serde_json::from_str::<CampaignSpec>(&def).map_err(|e| RecordError {
        kind: "meta",
        raw: format!("{}={def}", meta::DEFINITION),
        why: format!("not a campaign definition: {e}"),
    })?;
    Ok(Some((
        spec,
        read_flag(meta::CLOSED, closed)?,
        read_flag(meta::DRAFT, draft)?,
    )))
}

/// A meta flag as `meta::flag` writes it; a created campaign always has it.
fn read_flag(name: &str, value: Option<String>) -> Result<bool, RecordError> {
    match value.as_deref() {
        Some(v) if v == meta::flag(true) => Ok(true),
        Some(v) if v == meta::flag(false) => Ok(false),
        _ => Err(RecordError {
            kind: "meta",
            raw: format!("{name}={value:?}"),
            why: "not a flag (0 or 1)".into(),
        }),
    }
}

/// A count the API shows unsigned: a negative one is an error.
fn unsigned(kind: &'static str, name: &str, v: i64) -> Result<u64, RecordError> {
    u64::try_from(v).map_err(|_| RecordError {
        kind,
        raw: format!("{name}={v}"),
        why: "negative".into(),
    })
}

/// A count field of a hash (`None`: absent, read as 0, as the script does).
pub(crate) fn read_count(
    kind: &'static str,
    name: &str,
    value: Option<&str>,
) -> Result<u64, RecordError> {
    value.map_or(Ok(0), |v| {
        v.parse().map_err(|_| RecordError {
            kind,
            raw: format!("{name}={v}"),
            why: "not a count".into(),
        })
    })
}

fn stock_view(c: StockCounters) -> Result<StockView, RecordError> {
    let n = |name, v| unsigned("stock", name, v);
    Ok(StockView {
        total: n(stock::TOTAL, c.total)?,
        available: n(stock::AVAILABLE, c.available)?,
        reserved: n(stock::RESERVED, c.reserved)?,
        paid: n(stock::PAID, c.paid)?,
    })
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
        .arg(meta::DEFINITION)
        .query_async(con)
        .await
}

/// A lottery's draw commitment, and its secret once no draw can be decided
/// any more: the campaign is closed, or its window has ended by Redis' clock
/// (`redis_now_ms`, the clock decide.lua refuses late draws by, so no
/// process clock running behind reveals it early). `None`s for a sale.
fn draw_fields(
    spec: &CampaignSpec,
    closed: bool,
    redis_now_ms: i64,
    draw_key: &[u8],
) -> (Option<String>, Option<String>) {
    if spec.kind != CampaignKind::Lottery {
        return (None, None);
    }
    let secret = DrawSecret::derive(draw_key, &spec.id);
    let over = closed || redis_now_ms >= spec.ends_at.timestamp_millis();
    (Some(secret.commitment()), over.then(|| secret.to_hex()))
}

/// The full view of a campaign, if it exists; a lottery's draw commitment
/// and (once it is over) secret are derived from `draw_key`.
pub(crate) async fn read_view(
    con: &mut ConnectionManager,
    keys: &KeyLayout,
    draw_key: &[u8],
    campaign_id: &str,
) -> Result<Option<CampaignView>, ReadError> {
    let k = keys.campaign(campaign_id);
    type Raw = (
        Head,
        HashMap<String, String>,
        HashMap<String, String>,
        (i64, i64),
    );
    let (head, stock_hash, prize_units, (secs, micros)): Raw = redis::pipe()
        .hmget(&k.meta, &HEAD_FIELDS)
        .hgetall(&k.stock)
        .hgetall(&k.prizes)
        .cmd("TIME")
        .query_async(con)
        .await?;
    let Some((spec, closed, draft)) = read_head(head)? else {
        return Ok(None);
    };
    let (draw_commitment, draw_secret) =
        draw_fields(&spec, closed, secs * 1000 + micros / 1000, draw_key);
    let own = StockCounters::from_hash(&stock_hash)?;
    let siblings = sibling_counters(con, keys, &spec).await?;
    let bucket_stock = if siblings.is_empty() {
        Vec::new()
    } else {
        std::iter::once(own)
            .chain(siblings)
            .map(stock_view)
            .collect::<Result<Vec<_>, _>>()?
    };
    let stock = if bucket_stock.is_empty() {
        stock_view(own)?
    } else {
        bucket_stock
            .iter()
            .fold(StockView::default(), |sum, b| StockView {
                total: sum.total + b.total,
                available: sum.available + b.available,
                reserved: sum.reserved + b.reserved,
                paid: sum.paid + b.paid,
            })
    };
    let prize_stock = spec
        .draw_table()
        .into_iter()
        .map(|p| {
            let total = prizes::total(&p.id);
            Ok(PrizeStock {
                total: read_count(
                    "prizes",
                    &total,
                    prize_units.get(&total).map(String::as_str),
                )?,
                available: read_count("prizes", &p.id, prize_units.get(&p.id).map(String::as_str))?,
                id: p.id,
                name: p.name,
            })
        })
        .collect::<Result<Vec<_>, RecordError>>()?;
    Ok(Some(CampaignView {
        state: state_at(
            spec.starts_at.timestamp_millis(),
            spec.ends_at.timestamp_millis(),
            closed,
            draft,
            Utc::now().timestamp_millis(),
        ),
        stock,
        id: spec.id.clone(),
        name: spec.name.clone(),
        kind: spec.kind,
        per_user_limit: spec.per_user_limit,
        starts_at: spec.starts_at,
        ends_at: spec.ends_at,
        payment_timeout_secs: spec.payment_timeout_secs,
        price: spec.price,
        prizes: prize_stock,
        buckets: spec.bucket_count(),
        bucket_stock,
        definition: spec,
        draw_commitment,
        draw_secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> String {
        serde_json::to_string(&CampaignSpec {
            id: "c1".into(),
            name: "c1".into(),
            stock: 1,
            ..CampaignSpec::default()
        })
        .unwrap_or_default()
    }

    fn head(def: Option<String>, closed: Option<&str>, draft: Option<&str>) -> Head {
        (def, closed.map(Into::into), draft.map(Into::into))
    }

    #[test]
    fn meta_flags_read_as_written_and_anything_else_is_an_error() {
        let flags = |closed, draft| {
            read_head(head(Some(def()), Some(closed), Some(draft)))
                .map(|h| h.map(|(_, c, d)| (c, d)))
        };
        assert_eq!(
            flags(meta::flag(true), meta::flag(false)),
            Ok(Some((true, false)))
        );
        assert_eq!(
            flags(meta::flag(false), meta::flag(true)),
            Ok(Some((false, true)))
        );
        // No definition: no campaign, whatever else is there.
        assert_eq!(
            read_head(head(None, None, None)).map(|h| h.is_none()),
            Ok(true)
        );
        // Unreadable: a flag not 0/1, a missing flag, a broken definition.
        assert!(flags("yes", meta::flag(false)).is_err());
        assert!(read_head(head(Some(def()), None, Some("0"))).is_err());
        assert!(read_head(head(Some("{".into()), Some("0"), Some("0"))).is_err());
    }

    #[test]
    fn a_lottery_shows_its_commitment_and_reveals_its_secret_only_once_over() {
        let key = b"draw-key-0123456789";
        let now = Utc::now();
        let lottery = CampaignSpec {
            id: "lot".into(),
            name: "lot".into(),
            kind: CampaignKind::Lottery,
            stock: 1,
            starts_at: now - chrono::Duration::hours(1),
            ends_at: now + chrono::Duration::hours(1),
            ..CampaignSpec::default()
        };
        let secret = DrawSecret::derive(key, "lot");
        let open_ms = now.timestamp_millis();
        let ended_ms = lottery.ends_at.timestamp_millis();
        assert_eq!(
            draw_fields(&lottery, false, open_ms, key),
            (Some(secret.commitment()), None),
            "open: the commitment only"
        );
        assert_eq!(
            draw_fields(&lottery, false, ended_ms - 1, key),
            (Some(secret.commitment()), None)
        );
        for (closed, at) in [(true, open_ms), (false, ended_ms)] {
            let (c, s) = draw_fields(&lottery, closed, at, key);
            assert_eq!(c, Some(secret.commitment()));
            let s = DrawSecret::from_hex(&s.expect("revealed")).expect("hex");
            assert!(s.matches(&secret.commitment()));
        }
        let sale = CampaignSpec {
            kind: CampaignKind::Sale,
            ..lottery
        };
        assert_eq!(draw_fields(&sale, true, ended_ms, key), (None, None));
    }

    #[test]
    fn counts_are_unsigned_numbers_and_absent_ones_are_zero() {
        assert_eq!(read_count("users", "u1", None), Ok(0));
        assert_eq!(read_count("users", "u1", Some("3")), Ok(3));
        assert!(read_count("users", "u1", Some("-1")).is_err());
        assert!(read_count("users", "u1", Some("x")).is_err());
        let counters = StockCounters {
            total: 5,
            available: 2,
            reserved: 1,
            paid: 2,
        };
        assert_eq!(
            stock_view(counters),
            Ok(StockView {
                total: 5,
                available: 2,
                reserved: 1,
                paid: 2,
            })
        );
        assert!(stock_view(StockCounters {
            available: -1,
            ..counters
        })
        .is_err());
    }
}
