//! The Rust side of `decide.lua`: encodes a campaign's operations, runs the
//! script, and reads its answers back.

use redis::aio::ConnectionManager;
use serde::Serialize;

use seckill_schemas::state::{op, retention, Answer, RecordError};
use seckill_schemas::{
    order_id_for, split_key, CampaignAction, CampaignKind, CampaignSpec, DrawSecret, DrawStrategy,
    KeyLayout, OrderAction, RequestEvent,
};

/// The decision script. `redis::Script` runs it by SHA and reloads it when
/// the server answers NOSCRIPT (script cache flushed, Redis restarted).
const SCRIPT: &str = include_str!("decide.lua");

#[derive(Serialize)]
pub(crate) struct PrizeRow {
    id: String,
    p: f64,
    price: u64,
    stock: u64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Op<'a> {
    Purchase {
        t: &'static str,
        r: &'a str,
        u: &'a str,
        q: u32,
        o: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        d: Option<f64>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        ne: bool,
        /// When it was requested (unix ms), kept with a purchase a stock
        /// bucket parks; only sent for campaigns with buckets.
        #[serde(skip_serializing_if = "Option::is_none")]
        at: Option<i64>,
    },
    Create {
        t: &'static str,
        r: &'a str,
        def: String,
        kind: &'static str,
        stock: u64,
        limit: u32,
        start: i64,
        end: i64,
        timeout: u32,
        price: u64,
        draft: bool,
        max_att: u32,
        strategy: &'static str,
        table: Vec<PrizeRow>,
        /// `table` as the text the meta hash stores, written by serde so
        /// that a repair (`meta_fields`) writes the same bytes: cjson would
        /// reorder keys, round probabilities to 14 digits and write an
        /// empty table as `{}`.
        table_json: String,
        /// Stock buckets of the campaign and which one this is, when it
        /// has more than one (`stock` is then the bucket's share).
        #[serde(skip_serializing_if = "Option::is_none")]
        nb: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        b: Option<u32>,
    },
    AddStock {
        t: &'static str,
        r: &'a str,
        q: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        prize: Option<&'a str>,
    },
    Order {
        t: &'static str,
        r: &'a str,
        o: &'a str,
        u: &'a str,
        /// The payment's reference, on a pay.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        payment_ref: Option<&'a str>,
    },
    Simple {
        t: &'static str,
        r: &'a str,
    },
    Fence {
        t: &'static str,
        r: &'a str,
        token: &'a str,
        until_ms: i64,
    },
    /// A stock bucket's borrow (`q` wanted) or transfer (`q` units).
    Loan {
        t: &'static str,
        r: &'a str,
        from: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        want: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        units: Option<u64>,
        round: u64,
        ask: u32,
    },
}

pub(crate) fn kind_name(spec: &CampaignSpec) -> &'static str {
    match spec.kind {
        CampaignKind::Sale => "sale",
        CampaignKind::Lottery => "lottery",
    }
}

pub(crate) fn strategy_name(spec: &CampaignSpec) -> &'static str {
    match spec.strategy.unwrap_or_default() {
        DrawStrategy::Fixed => "fixed",
        DrawStrategy::Renormalize => "renormalize",
    }
}

/// The lottery's draw table as the script reads it.
pub(crate) fn table_rows(spec: &CampaignSpec) -> Vec<PrizeRow> {
    spec.draw_table()
        .into_iter()
        .map(|p| PrizeRow {
            price: p.price.unwrap_or(0),
            id: p.id,
            p: p.probability,
            stock: p.stock,
        })
        .collect()
}

fn canonical(spec: &CampaignSpec) -> String {
    // serde writes fields in declaration order and skips unset options, so
    // equal specs give equal strings.
    serde_json::to_string(spec).unwrap_or_default()
}

impl<'a> Op<'a> {
    /// The operation of `event` for stock bucket `bucket` of its campaign;
    /// `secret` is the campaign's draw secret, which a lottery's purchases
    /// draw with.
    fn of(
        event: &'a RequestEvent,
        spec: Option<&CampaignSpec>,
        secret: &DrawSecret,
        bucket: u32,
    ) -> Self {
        match event {
            RequestEvent::PurchaseRequested(p) => {
                let d = spec
                    .filter(|s| s.kind == CampaignKind::Lottery)
                    .map(|_| secret.point(&p.request_id));
                let eligible = match spec.and_then(|s| s.eligibility.as_ref()) {
                    Some(rule) => p.attributes.as_ref().is_some_and(|a| rule.eval(a)),
                    None => true,
                };
                Op::Purchase {
                    t: op::PURCHASE,
                    r: &p.request_id,
                    u: &p.user_id,
                    q: p.quantity,
                    o: order_id_for(&p.request_id),
                    d,
                    ne: !eligible,
                    at: spec.filter(|s| s.bucket_count() > 1).and(p.requested_at_ms),
                }
            }
            RequestEvent::UpsertCampaign(u) => {
                let c = &u.campaign;
                let nb = c.bucket_count();
                let stock = if nb > 1 {
                    seckill_schemas::buckets::shares(c.stock, nb)
                        .get(bucket as usize)
                        .copied()
                        .unwrap_or(0)
                } else {
                    c.stock
                };
                Op::Create {
                    t: op::CREATE,
                    r: &u.request_id,
                    def: canonical(c),
                    kind: kind_name(c),
                    stock,
                    limit: c.per_user_limit,
                    start: c.starts_at.timestamp_millis(),
                    end: c.ends_at.timestamp_millis(),
                    timeout: c.payment_timeout_secs,
                    price: c.price,
                    draft: c.draft,
                    max_att: c.max_attempts_per_user.unwrap_or(0),
                    strategy: strategy_name(c),
                    table: table_rows(c),
                    table_json: serde_json::to_string(&table_rows(c)).unwrap_or_default(),
                    nb: (nb > 1).then_some(nb),
                    b: (nb > 1).then_some(bucket),
                }
            }
            RequestEvent::CampaignCommand(c) => match &c.action {
                CampaignAction::AddStock { quantity, prize_id } => Op::AddStock {
                    t: op::ADD_STOCK,
                    r: &c.request_id,
                    q: *quantity,
                    prize: prize_id.as_deref(),
                },
                CampaignAction::Close => Op::Simple {
                    t: op::CLOSE,
                    r: &c.request_id,
                },
                CampaignAction::Publish => Op::Simple {
                    t: op::PUBLISH,
                    r: &c.request_id,
                },
                CampaignAction::Reset => Op::Simple {
                    t: op::RESET,
                    r: &c.request_id,
                },
                CampaignAction::Fence { token, until_ms } => Op::Fence {
                    t: op::FENCE,
                    r: &c.request_id,
                    token,
                    until_ms: *until_ms,
                },
                CampaignAction::Borrow {
                    from,
                    want,
                    round,
                    ask,
                } => Op::Loan {
                    t: op::BORROW,
                    r: &c.request_id,
                    from: *from,
                    want: Some(*want),
                    units: None,
                    round: *round,
                    ask: *ask,
                },
                CampaignAction::Transfer {
                    from,
                    units,
                    round,
                    ask,
                } => Op::Loan {
                    t: op::TRANSFER,
                    r: &c.request_id,
                    from: *from,
                    want: None,
                    units: Some(*units),
                    round: *round,
                    ask: *ask,
                },
            },
            RequestEvent::OrderCommand(o) => Op::Order {
                t: match o.action {
                    OrderAction::Pay => op::PAY,
                    OrderAction::Cancel => op::CANCEL,
                },
                r: &o.request_id,
                o: &o.order_id,
                u: &o.user_id,
                payment_ref: o.payment_ref.as_deref(),
            },
            RequestEvent::ExpireDue(e) => Op::Simple {
                t: op::EXPIRE,
                r: &e.request_id,
            },
        }
    }
}

/// Why a campaign's operations could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("Redis call failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the decision script answered {0:?}, which this build cannot read")]
    BadAnswer(String),
    #[error("the decision script's answer does not read: {0}")]
    Record(#[from] RecordError),
    /// The campaign is fenced for a repair: the call decided what came
    /// before the fence and held the rest; repeat it once the repair is
    /// written.
    #[error("campaign fenced for a repair (token {token}); held until the repair is written")]
    Fenced { token: String },
}

/// Runs the decision script.
#[derive(Clone)]
pub struct Decider {
    script: redis::Script,
    keys: KeyLayout,
    retention_secs: u64,
    /// The key every campaign's draw secret is derived from (see
    /// `seckill_schemas::DrawSecret`); never shown.
    draw_key: Vec<u8>,
}

impl std::fmt::Debug for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider")
            .field("keys", &self.keys)
            .field("retention_secs", &self.retention_secs)
            .finish_non_exhaustive()
    }
}

impl Decider {
    /// A decider with the default retention ([`retention::DEFAULT_SECS`])
    /// whose lotteries draw with secrets derived from `draw_key`.
    pub fn new(key_prefix: &str, draw_key: Vec<u8>) -> Self {
        Self::with_retention(key_prefix, retention::DEFAULT_SECS, draw_key)
    }

    /// A decider whose retired campaigns (closed, or past their window's
    /// end) keep their per-request records `retention_secs` seconds after
    /// retiring (or after their last pending payment deadline, if later).
    pub fn with_retention(key_prefix: &str, retention_secs: u64, draw_key: Vec<u8>) -> Self {
        Self {
            script: redis::Script::new(SCRIPT),
            keys: KeyLayout::new(key_prefix),
            retention_secs,
            draw_key,
        }
    }

    /// Decides `events` (all of one campaign, in offset order) in one
    /// atomic call; `spec` is the campaign's definition when known. Safe to
    /// repeat: recorded requests come back with their stored answer.
    /// `campaign_id` is the campaign's key: its id, or `<id>#<b>` for stock
    /// bucket b (see `seckill_schemas::buckets`).
    pub async fn decide(
        &self,
        con: &mut ConnectionManager,
        campaign_id: &str,
        spec: Option<&CampaignSpec>,
        events: &[&RequestEvent],
    ) -> Result<Vec<Vec<Answer>>, DecideError> {
        // A create earlier in the same call defines the campaign for the
        // requests after it.
        let mut known = spec.cloned();
        // Derived, never stored: the same key gives the same secret, so a
        // redelivered request draws the same point on any processor.
        let (base, bucket) = split_key(campaign_id).unwrap_or((campaign_id, 0));
        let secret = DrawSecret::derive(&self.draw_key, base);
        let mut ops = Vec::with_capacity(events.len());
        for e in events {
            let op = Op::of(e, known.as_ref(), &secret, bucket);
            if let RequestEvent::UpsertCampaign(u) = e {
                known.get_or_insert_with(|| u.campaign.clone());
            }
            ops.push(op);
        }
        // Encoding plain structs of strings and numbers cannot fail.
        let arg = serde_json::to_string(&ops).unwrap_or_default();
        let k = self.keys.campaign(campaign_id);
        let mut call = self.script.prepare_invoke();
        for key in k.script_keys() {
            call.key(key);
        }
        let raw: Vec<String> = call
            .arg(arg)
            .arg(self.retention_secs)
            .invoke_async(con)
            .await?;
        if raw.len() != events.len() {
            return Err(DecideError::BadAnswer(format!(
                "{} answers for {} operations",
                raw.len(),
                events.len()
            )));
        }
        if let Some(token) = raw.iter().find_map(|r| r.strip_prefix("f|")) {
            return Err(DecideError::Fenced {
                token: token.to_owned(),
            });
        }
        raw.iter()
            .map(|r| Answer::decode_all(r).map_err(DecideError::from))
            .collect()
    }
}
