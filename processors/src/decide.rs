//! The Rust side of `decide.lua`: encodes a campaign's operations, runs the
//! script, and reads its answers back.

use redis::aio::ConnectionManager;
use serde::Serialize;

use seckill_schemas::{
    order_id_for, CampaignOutcome, DecisionStatus, KeyLayout, PurchaseRequested, RequestEvent,
    UpsertCampaign,
};

/// The decision script. `redis::Script` runs it by SHA and reloads it when
/// the server answers NOSCRIPT (script cache flushed, Redis restarted).
const SCRIPT: &str = include_str!("decide.lua");

#[derive(Serialize)]
#[serde(untagged)]
enum Op<'a> {
    Purchase {
        t: &'static str,
        r: &'a str,
        u: &'a str,
        q: u32,
        o: String,
    },
    Create {
        t: &'static str,
        r: &'a str,
        def: String,
        stock: u64,
        limit: u32,
        start: i64,
        end: i64,
        timeout: u32,
        price: u64,
    },
}

impl<'a> Op<'a> {
    fn purchase(p: &'a PurchaseRequested) -> Self {
        Op::Purchase {
            t: "p",
            r: &p.request_id,
            u: &p.user_id,
            q: p.quantity,
            o: order_id_for(&p.request_id),
        }
    }

    fn create(u: &'a UpsertCampaign) -> Self {
        let c = &u.campaign;
        Op::Create {
            t: "c",
            r: &u.request_id,
            // The spec's own JSON is the definition compared on a repeat
            // create; serde writes fields in declaration order, so equal
            // specs give equal strings.
            def: serde_json::to_string(c).unwrap_or_default(),
            stock: c.stock,
            limit: c.per_user_limit,
            start: c.starts_at.timestamp_millis(),
            end: c.ends_at.timestamp_millis(),
            timeout: c.payment_timeout_secs,
            price: c.price,
        }
    }
}

/// What the script answered for one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Purchase {
        status: DecisionStatus,
        reason: String,
        order_id: Option<String>,
        quantity: u32,
        decided_at_ms: i64,
        expires_at_ms: i64,
        price: u64,
    },
    Campaign {
        outcome: CampaignOutcome,
        decided_at_ms: i64,
    },
}

impl Outcome {
    /// Parses `status|reason|order|quantity|decided_at|expires_at|price`.
    fn parse(raw: &str) -> Option<Self> {
        let mut f = raw.split('|');
        let status = f.next()?;
        let reason = f.next()?.to_owned();
        let order = f.next()?;
        let quantity = f.next()?.parse().unwrap_or(0);
        let decided_at_ms = f.next()?.parse().ok()?;
        let expires_at_ms = f.next()?.parse().unwrap_or(0);
        let price = f.next()?.parse().unwrap_or(0);
        let outcome = match status {
            "created" => CampaignOutcome::Created,
            "unchanged" => CampaignOutcome::Unchanged,
            "conflict" => CampaignOutcome::Conflict,
            other => {
                return Some(Outcome::Purchase {
                    status: DecisionStatus::parse(other)?,
                    reason,
                    order_id: (!order.is_empty()).then(|| order.to_owned()),
                    quantity,
                    decided_at_ms,
                    expires_at_ms,
                    price,
                })
            }
        };
        Some(Outcome::Campaign {
            outcome,
            decided_at_ms,
        })
    }
}

/// Why a campaign's operations could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("Redis call failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the decision script answered {0:?}, which this build cannot read")]
    BadAnswer(String),
}

/// Runs the decision script.
#[derive(Debug, Clone)]
pub struct Decider {
    script: redis::Script,
    keys: KeyLayout,
}

impl Decider {
    pub fn new(key_prefix: &str) -> Self {
        Self {
            script: redis::Script::new(SCRIPT),
            keys: KeyLayout::new(key_prefix),
        }
    }

    /// Decides `events` (all of one campaign, in offset order) in one
    /// atomic call. Safe to repeat: already decided requests come back with
    /// their stored answer.
    pub async fn decide(
        &self,
        con: &mut ConnectionManager,
        campaign_id: &str,
        events: &[&RequestEvent],
    ) -> Result<Vec<Outcome>, DecideError> {
        let ops: Vec<Op<'_>> = events
            .iter()
            .map(|e| match e {
                RequestEvent::PurchaseRequested(p) => Op::purchase(p),
                RequestEvent::UpsertCampaign(u) => Op::create(u),
            })
            .collect();
        // Encoding plain structs of strings and numbers cannot fail.
        let arg = serde_json::to_string(&ops).unwrap_or_default();
        let k = self.keys.campaign(campaign_id);
        let raw: Vec<String> = self
            .script
            .key(&k.meta)
            .key(&k.stock)
            .key(&k.users)
            .key(&k.requests)
            .key(&k.orders)
            .arg(arg)
            .invoke_async(con)
            .await?;
        if raw.len() != events.len() {
            return Err(DecideError::BadAnswer(format!(
                "{} answers for {} operations",
                raw.len(),
                events.len()
            )));
        }
        raw.iter()
            .map(|r| Outcome::parse(r).ok_or_else(|| DecideError::BadAnswer(r.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_reservation_and_a_rejection() {
        let r = Outcome::parse("reserved||o-1|2|1700000000000|1700000300000|999").unwrap();
        assert_eq!(
            r,
            Outcome::Purchase {
                status: DecisionStatus::Reserved,
                reason: String::new(),
                order_id: Some("o-1".into()),
                quantity: 2,
                decided_at_ms: 1_700_000_000_000,
                expires_at_ms: 1_700_000_300_000,
                price: 999,
            }
        );
        let s = Outcome::parse("sold_out|sold_out|||1700000000000||").unwrap();
        assert!(matches!(
            s,
            Outcome::Purchase {
                status: DecisionStatus::SoldOut,
                order_id: None,
                ..
            }
        ));
        let c = Outcome::parse("conflict|different_definition|||5||").unwrap();
        assert_eq!(
            c,
            Outcome::Campaign {
                outcome: CampaignOutcome::Conflict,
                decided_at_ms: 5
            }
        );
        assert!(Outcome::parse("garbage").is_none());
    }
}
