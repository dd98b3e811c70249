//! The records a campaign's hashes hold, one codec each. Fields are joined
//! by `|` (ids and user ids never contain it: see `validate`), several
//! records of one answer by a newline. A payment reference may contain
//! `|` (never a newline): it is always a record's last field, read as the
//! rest of the record.

use std::collections::HashMap;
use std::str::FromStr;

use crate::{CampaignOutcome, DecisionStatus, OrderStatus, RefusalReason};

/// A record this build cannot read: the script and this module drifted, or
/// the key holds something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {kind} record {raw:?}: {why}")]
pub struct RecordError {
    pub kind: &'static str,
    pub raw: String,
    pub why: String,
}

/// Splits `raw` into exactly `n` fields.
fn fields<'a>(kind: &'static str, raw: &'a str, n: usize) -> Result<Vec<&'a str>, RecordError> {
    let f: Vec<&str> = raw.split('|').collect();
    if f.len() != n {
        return Err(RecordError {
            kind,
            raw: raw.to_owned(),
            why: format!("{} fields, expected {n}", f.len()),
        });
    }
    Ok(f)
}

/// Reads field values of one record, naming the record in errors.
struct Reader<'a> {
    kind: &'static str,
    raw: &'a str,
    f: Vec<&'a str>,
}

impl<'a> Reader<'a> {
    fn new(kind: &'static str, raw: &'a str, n: usize) -> Result<Self, RecordError> {
        Ok(Self {
            kind,
            raw,
            f: fields(kind, raw, n)?,
        })
    }

    /// A record of `short` fields, or of `long` whose last field is the
    /// rest of the record (and may contain `|`).
    fn with_tail(
        kind: &'static str,
        raw: &'a str,
        short: usize,
        long: usize,
    ) -> Result<Self, RecordError> {
        let f: Vec<&str> = raw.splitn(long, '|').collect();
        if f.len() != short && f.len() != long {
            return Err(RecordError {
                kind,
                raw: raw.to_owned(),
                why: format!("{} fields, expected {short} or {long}", f.len()),
            });
        }
        Ok(Self { kind, raw, f })
    }

    /// Whether field `i` is there (records with a tail).
    fn has(&self, i: usize) -> bool {
        i < self.f.len()
    }

    fn err(&self, why: String) -> RecordError {
        RecordError {
            kind: self.kind,
            raw: self.raw.to_owned(),
            why,
        }
    }

    fn text(&self, i: usize) -> &'a str {
        self.f[i]
    }

    fn opt(&self, i: usize) -> Option<String> {
        (!self.f[i].is_empty()).then(|| self.f[i].to_owned())
    }

    fn num<T: FromStr>(&self, i: usize, name: &str) -> Result<T, RecordError> {
        self.f[i]
            .parse()
            .map_err(|_| self.err(format!("{name} {:?} is not a number", self.f[i])))
    }

    /// A number that may be left empty (read as `T::default()`).
    fn num_or_default<T: FromStr + Default>(&self, i: usize, name: &str) -> Result<T, RecordError> {
        if self.f[i].is_empty() {
            Ok(T::default())
        } else {
            self.num(i, name)
        }
    }

    fn parsed<T>(
        &self,
        i: usize,
        name: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, RecordError> {
        parse(self.f[i]).ok_or_else(|| self.err(format!("unknown {name} {:?}", self.f[i])))
    }

    fn reason(&self, i: usize) -> Result<Option<RefusalReason>, RecordError> {
        if self.f[i].is_empty() {
            return Ok(None);
        }
        self.f[i]
            .parse()
            .map(Some)
            .map_err(|e: crate::UnknownReason| self.err(e.to_string()))
    }
}

fn order_status(s: &str) -> Option<OrderStatus> {
    s.parse().ok()
}

fn campaign_outcome(s: &str) -> Option<CampaignOutcome> {
    Some(match s {
        "created" => CampaignOutcome::Created,
        "unchanged" => CampaignOutcome::Unchanged,
        "conflict" => CampaignOutcome::Conflict,
        "applied" => CampaignOutcome::Applied,
        "refused" => CampaignOutcome::Refused,
        _ => return None,
    })
}

fn outcome_word(o: CampaignOutcome) -> &'static str {
    match o {
        CampaignOutcome::Created => "created",
        CampaignOutcome::Unchanged => "unchanged",
        CampaignOutcome::Conflict => "conflict",
        CampaignOutcome::Applied => "applied",
        CampaignOutcome::Refused => "refused",
    }
}

/// The four counters of the `stock` hash. The script keeps
/// `available + reserved + paid == total` and `available >= 0`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StockCounters {
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub paid: i64,
}

impl StockCounters {
    /// From the values of [`super::stock::ALL`], in that order (an HMGET);
    /// a missing field reads as 0.
    pub fn from_values(values: [Option<i64>; 4]) -> Self {
        let [total, available, reserved, paid] = values.map(|v| v.unwrap_or(0));
        Self {
            total,
            available,
            reserved,
            paid,
        }
    }

    /// From the whole hash (an HGETALL); a missing field reads as 0, an
    /// unreadable one is an error.
    pub fn from_hash(hash: &HashMap<String, String>) -> Result<Self, RecordError> {
        let mut values = [None; 4];
        for (slot, name) in values.iter_mut().zip(super::stock::ALL) {
            if let Some(v) = hash.get(name) {
                *slot = Some(v.parse().map_err(|_| RecordError {
                    kind: "stock",
                    raw: format!("{name}={v}"),
                    why: "not a number".into(),
                })?);
            }
        }
        Ok(Self::from_values(values))
    }

    /// The hash's fields and values.
    pub fn fields(&self) -> [(&'static str, String); 4] {
        [
            (super::stock::TOTAL, self.total.to_string()),
            (super::stock::AVAILABLE, self.available.to_string()),
            (super::stock::RESERVED, self.reserved.to_string()),
            (super::stock::PAID, self.paid.to_string()),
        ]
    }

    /// Whether `available + reserved + paid == total`.
    pub fn conserved(&self) -> bool {
        self.available + self.reserved + self.paid == self.total
    }
}

/// How the payments service paid an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// When the pay was decided (Redis time, unix ms): the time of the
    /// `paid` transition, which a pay repeating it answers with again.
    pub paid_at_ms: i64,
    /// The payments service's reference.
    pub payment_ref: String,
}

/// An order as the `orders` hash stores it under its order id:
/// `user|quantity|status|expires_at|purchase_request_id|price|created_at|prize`,
/// then `|paid_at|payment_ref` once the payments service paid it (a free
/// prize born paid, or an order paid before references, has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    pub user_id: String,
    pub quantity: u32,
    pub status: OrderStatus,
    pub expires_at_ms: i64,
    pub purchase_request_id: String,
    pub price: u64,
    pub created_at_ms: i64,
    pub prize_id: Option<String>,
    pub payment: Option<Payment>,
}

impl StoredOrder {
    pub fn encode(&self) -> String {
        let mut raw = format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            self.user_id,
            self.quantity,
            self.status.as_str(),
            self.expires_at_ms,
            self.purchase_request_id,
            self.price,
            self.created_at_ms,
            self.prize_id.as_deref().unwrap_or("")
        );
        if let Some(p) = &self.payment {
            raw.push_str(&format!("|{}|{}", p.paid_at_ms, p.payment_ref));
        }
        raw
    }

    pub fn decode(raw: &str) -> Result<Self, RecordError> {
        let r = Reader::with_tail("order", raw, 8, 10)?;
        Ok(Self {
            user_id: r.text(0).to_owned(),
            quantity: r.num(1, "quantity")?,
            status: r.parsed(2, "status", order_status)?,
            expires_at_ms: r.num(3, "expires_at")?,
            purchase_request_id: r.text(4).to_owned(),
            price: r.num(5, "price")?,
            created_at_ms: r.num(6, "created_at")?,
            prize_id: r.opt(7),
            payment: if r.has(9) {
                Some(Payment {
                    paid_at_ms: r.num(8, "paid_at")?,
                    payment_ref: r.text(9).to_owned(),
                })
            } else {
                None
            },
        })
    }
}

/// An order as a transition record reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub order_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub price: u64,
    pub purchase_request_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub prize_id: Option<String>,
    /// The payment's reference, on a `paid` transition of a pay.
    pub payment_ref: Option<String>,
}

/// One record of the script's answer to an operation. Purchase and
/// command answers are also what the `requests` hash keeps under the
/// request id, so a redelivered request gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `d|status|reason|order|quantity|decided|expires|price|prize|confirmed`
    /// (quantity, expires and price empty when no order was made).
    Purchase {
        status: DecisionStatus,
        /// Set exactly when no order was made.
        reason: Option<RefusalReason>,
        order_id: Option<String>,
        quantity: u32,
        decided_at_ms: i64,
        expires_at_ms: i64,
        price: u64,
        prize_id: Option<String>,
        /// A free prize: the order is born paid.
        confirmed: bool,
    },
    /// `c|outcome|reason|decided`
    Campaign {
        outcome: CampaignOutcome,
        reason: Option<RefusalReason>,
        decided_at_ms: i64,
    },
    /// `t|to|order|user|quantity|price|purchase_request|created|expires|prize|decided`,
    /// then `|payment_ref` on a pay's `paid` (a pay repeating the one that
    /// paid the order answers this record again, `decided` its time).
    Transition {
        to: OrderStatus,
        order: OrderRecord,
        decided_at_ms: i64,
    },
    /// `r|reason|decided`: a pay or cancel refused.
    CommandRefused {
        reason: RefusalReason,
        decided_at_ms: i64,
    },
    /// `q|decided`: a purchase of a stock bucket that waits, parked, for
    /// units from a sibling bucket; it has no decision yet.
    Held { decided_at_ms: i64 },
    /// `b|to|want|round|ask`: ask bucket `to` to lend `want` units (ask
    /// `ask` of this bucket's borrowing round `round`).
    Borrow {
        to: u32,
        want: u64,
        round: u64,
        ask: u32,
    },
    /// `l|to|units|round|ask`: `units` left this bucket's total for bucket
    /// `to`, answering its ask `ask` of round `round`.
    Lend {
        to: u32,
        units: u64,
        round: u64,
        ask: u32,
    },
    /// `s|request|user|requested_at|` then the fields of a `d` record: a
    /// parked purchase decided now (its own answer is that `d` record).
    Served {
        request_id: String,
        user_id: String,
        requested_at_ms: i64,
        decision: Box<Answer>,
    },
}

impl Answer {
    pub fn encode(&self) -> String {
        match self {
            Self::Purchase {
                status,
                reason,
                order_id,
                quantity,
                decided_at_ms,
                expires_at_ms,
                price,
                prize_id,
                confirmed,
            } => {
                let made = order_id.is_some();
                let when = |v: String| if made { v } else { String::new() };
                format!(
                    "d|{}|{}|{}|{}|{decided_at_ms}|{}|{}|{}|{}",
                    status.as_str(),
                    reason.map_or("", RefusalReason::as_str),
                    order_id.as_deref().unwrap_or(""),
                    when(quantity.to_string()),
                    when(expires_at_ms.to_string()),
                    when(price.to_string()),
                    prize_id.as_deref().unwrap_or(""),
                    meta_flag(*confirmed),
                )
            }
            Self::Campaign {
                outcome,
                reason,
                decided_at_ms,
            } => format!(
                "c|{}|{}|{decided_at_ms}",
                outcome_word(*outcome),
                reason.map_or("", RefusalReason::as_str)
            ),
            Self::Transition {
                to,
                order: o,
                decided_at_ms,
            } => {
                let mut raw = format!(
                    "t|{}|{}|{}|{}|{}|{}|{}|{}|{}|{decided_at_ms}",
                    to.as_str(),
                    o.order_id,
                    o.user_id,
                    o.quantity,
                    o.price,
                    o.purchase_request_id,
                    o.created_at_ms,
                    o.expires_at_ms,
                    o.prize_id.as_deref().unwrap_or(""),
                );
                if let Some(p) = &o.payment_ref {
                    raw.push('|');
                    raw.push_str(p);
                }
                raw
            }
            Self::CommandRefused {
                reason,
                decided_at_ms,
            } => format!("r|{}|{decided_at_ms}", reason.as_str()),
            Self::Held { decided_at_ms } => format!("q|{decided_at_ms}"),
            Self::Borrow {
                to,
                want,
                round,
                ask,
            } => format!("b|{to}|{want}|{round}|{ask}"),
            Self::Lend {
                to,
                units,
                round,
                ask,
            } => format!("l|{to}|{units}|{round}|{ask}"),
            Self::Served {
                request_id,
                user_id,
                requested_at_ms,
                decision,
            } => {
                let d = decision.encode();
                format!(
                    "s|{request_id}|{user_id}|{requested_at_ms}|{}",
                    d.strip_prefix("d|").unwrap_or(&d)
                )
            }
        }
    }

    pub fn decode(raw: &str) -> Result<Self, RecordError> {
        let tag = raw.split('|').next().unwrap_or("");
        Ok(match tag {
            "d" => {
                let r = Reader::new("decision", raw, 10)?;
                let status = r.parsed(1, "decision status", DecisionStatus::parse)?;
                let reason = r.reason(2)?;
                let order_id = r.opt(3);
                if order_id.is_some() == reason.is_some() {
                    return Err(r.err("a decision has either an order or a reason".into()));
                }
                Self::Purchase {
                    status,
                    reason,
                    order_id,
                    quantity: r.num_or_default(4, "quantity")?,
                    decided_at_ms: r.num(5, "decided_at")?,
                    expires_at_ms: r.num_or_default(6, "expires_at")?,
                    price: r.num_or_default(7, "price")?,
                    prize_id: r.opt(8),
                    confirmed: r.text(9) == "1",
                }
            }
            "c" => {
                let r = Reader::new("campaign", raw, 4)?;
                Self::Campaign {
                    outcome: r.parsed(1, "campaign outcome", campaign_outcome)?,
                    reason: r.reason(2)?,
                    decided_at_ms: r.num(3, "decided_at")?,
                }
            }
            "t" => {
                let r = Reader::with_tail("transition", raw, 11, 12)?;
                Self::Transition {
                    to: r.parsed(1, "status", order_status)?,
                    order: OrderRecord {
                        order_id: r.text(2).to_owned(),
                        user_id: r.text(3).to_owned(),
                        quantity: r.num(4, "quantity")?,
                        price: r.num_or_default(5, "price")?,
                        purchase_request_id: r.text(6).to_owned(),
                        created_at_ms: r.num_or_default(7, "created_at")?,
                        expires_at_ms: r.num_or_default(8, "expires_at")?,
                        prize_id: r.opt(9),
                        payment_ref: r.has(11).then(|| r.text(11).to_owned()),
                    },
                    decided_at_ms: r.num(10, "decided_at")?,
                }
            }
            "r" => {
                let r = Reader::new("refusal", raw, 3)?;
                Self::CommandRefused {
                    reason: r
                        .reason(1)?
                        .ok_or_else(|| r.err("a refusal needs a reason".into()))?,
                    decided_at_ms: r.num(2, "decided_at")?,
                }
            }
            "q" => {
                let r = Reader::new("held", raw, 2)?;
                Self::Held {
                    decided_at_ms: r.num(1, "decided_at")?,
                }
            }
            "b" => {
                let r = Reader::new("borrow", raw, 5)?;
                Self::Borrow {
                    to: r.num(1, "bucket")?,
                    want: r.num(2, "want")?,
                    round: r.num(3, "round")?,
                    ask: r.num(4, "ask")?,
                }
            }
            "l" => {
                let r = Reader::new("lend", raw, 5)?;
                Self::Lend {
                    to: r.num(1, "bucket")?,
                    units: r.num(2, "units")?,
                    round: r.num(3, "round")?,
                    ask: r.num(4, "ask")?,
                }
            }
            "s" => {
                let f: Vec<&str> = raw.splitn(5, '|').collect();
                let [_, request_id, user_id, at, rest] = f[..] else {
                    return Err(RecordError {
                        kind: "served",
                        raw: raw.to_owned(),
                        why: format!("{} fields, expected 13", f.len()),
                    });
                };
                let decision = Self::decode(&format!("d|{rest}"))?;
                Self::Served {
                    request_id: request_id.to_owned(),
                    user_id: user_id.to_owned(),
                    requested_at_ms: at.parse().map_err(|_| RecordError {
                        kind: "served",
                        raw: raw.to_owned(),
                        why: format!("requested_at {at:?} is not a number"),
                    })?,
                    decision: Box::new(decision),
                }
            }
            other => {
                return Err(RecordError {
                    kind: "answer",
                    raw: raw.to_owned(),
                    why: format!("unknown record kind {other:?}"),
                })
            }
        })
    }

    /// Every record of one operation's answer (an expiry sweep may have
    /// none or many).
    pub fn decode_all(raw: &str) -> Result<Vec<Self>, RecordError> {
        raw.split('\n')
            .filter(|r| !r.is_empty())
            .map(Self::decode)
            .collect()
    }
}

fn meta_flag(on: bool) -> &'static str {
    super::meta::flag(on)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_kind_reads_back_as_written() {
        let order = StoredOrder {
            user_id: "alice".into(),
            quantity: 2,
            status: OrderStatus::Reserved,
            expires_at_ms: 1_700_000_060_000,
            purchase_request_id: "r-1".into(),
            price: 1999,
            created_at_ms: 1_700_000_000_000,
            prize_id: None,
            payment: None,
        };
        assert_eq!(StoredOrder::decode(&order.encode()), Ok(order.clone()));
        // A paid order keeps its payment; the reference may hold the field
        // separator, being the last field.
        let paid = StoredOrder {
            status: OrderStatus::Paid,
            payment: Some(Payment {
                paid_at_ms: 1_700_000_030_000,
                payment_ref: "psp|2024 #17|".into(),
            }),
            ..order
        };
        assert_eq!(
            paid.encode(),
            "alice|2|paid|1700000060000|r-1|1999|1700000000000||1700000030000|psp|2024 #17|"
        );
        assert_eq!(StoredOrder::decode(&paid.encode()), Ok(paid));
        let answers = [
            Answer::Purchase {
                status: DecisionStatus::Won,
                reason: None,
                order_id: Some("o-1".into()),
                quantity: 1,
                decided_at_ms: 5,
                expires_at_ms: 6,
                price: 0,
                prize_id: Some("gold".into()),
                confirmed: true,
            },
            Answer::Purchase {
                status: DecisionStatus::SoldOut,
                reason: Some(RefusalReason::SoldOut),
                order_id: None,
                quantity: 0,
                decided_at_ms: 5,
                expires_at_ms: 0,
                price: 0,
                prize_id: None,
                confirmed: false,
            },
            Answer::Campaign {
                outcome: CampaignOutcome::Conflict,
                reason: Some(RefusalReason::DifferentDefinition),
                decided_at_ms: 7,
            },
            Answer::CommandRefused {
                reason: RefusalReason::NotOwner,
                decided_at_ms: 8,
            },
            Answer::Transition {
                to: OrderStatus::Cancelled,
                order: OrderRecord {
                    order_id: "o-1".into(),
                    user_id: "alice".into(),
                    quantity: 1,
                    price: 5,
                    purchase_request_id: "r-1".into(),
                    created_at_ms: 1,
                    expires_at_ms: 2,
                    prize_id: None,
                    payment_ref: None,
                },
                decided_at_ms: 9,
            },
            Answer::Transition {
                to: OrderStatus::Paid,
                order: OrderRecord {
                    order_id: "o-2".into(),
                    user_id: "bob".into(),
                    quantity: 1,
                    price: 5,
                    purchase_request_id: "r-2".into(),
                    created_at_ms: 1,
                    expires_at_ms: 2,
                    prize_id: Some("gold".into()),
                    payment_ref: Some("a|b".into()),
                },
                decided_at_ms: 9,
            },
        ];
        for a in answers.clone() {
            assert_eq!(Answer::decode(&a.encode()), Ok(a));
        }
        let buckets = [
            Answer::Held { decided_at_ms: 11 },
            Answer::Borrow {
                to: 3,
                want: 40,
                round: 7,
                ask: 2,
            },
            Answer::Lend {
                to: 1,
                units: 0,
                round: 7,
                ask: 3,
            },
            Answer::Served {
                request_id: "r-9".into(),
                user_id: "u-9".into(),
                requested_at_ms: 12,
                decision: Box::new(answers[0].clone()),
            },
            Answer::Served {
                request_id: "r-10".into(),
                user_id: "u-10".into(),
                requested_at_ms: 13,
                decision: Box::new(answers[1].clone()),
            },
        ];
        for a in buckets {
            assert_eq!(Answer::decode(&a.encode()), Ok(a));
        }
        assert!(Answer::decode("s|r|u|1|reserved").is_err());
        assert!(Answer::decode("b|1|2|3").is_err());
    }

    #[test]
    fn unknown_words_and_wrong_shapes_are_errors_not_guesses() {
        // An order status this build does not know.
        assert!(StoredOrder::decode("alice|1|refunded|0|r|0|0|").is_err());
        // A payment needs both its time and its reference.
        assert!(StoredOrder::decode("alice|1|paid|0|r|0|0||5").is_err());
        assert!(StoredOrder::decode("alice|1|paid|0|r|0|0||soon|ref").is_err());
        // A reason outside the list.
        assert!(Answer::decode("r|because|1").is_err());
        // A field too few.
        assert!(Answer::decode("c|applied|1").is_err());
        // A refusal without its reason, a decision with both or neither.
        assert!(Answer::decode("r||1").is_err());
        assert!(Answer::decode("d|reserved|sold_out|o-1|1|1|1|1||0").is_err());
        assert!(Answer::decode("d|sold_out||||1||||0").is_err());
        assert!(Answer::decode("x|1").is_err());
    }
}
