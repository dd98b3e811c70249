use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AwardType, RefusalReason};

/// Body of `POST /v1/purchases`. The user and their eligibility attributes
/// come from the caller's token, never from the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PurchaseBody {
    pub campaign_id: String,
    /// Units wanted (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
}

/// Body of `POST /v1/orders/{id}/pay`: the payment service's reference
/// for the payment, stored on the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PayBody {
    /// 1-128 printable ASCII characters.
    #[schemars(length(min = 1, max = 128))]
    pub payment_ref: String,
}

/// Body of `POST /v1/campaigns/{id}/stock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AddStockBody {
    /// Units to add, at least 1.
    pub quantity: u64,
    /// The prize to add to, for a lottery with prizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prize_id: Option<String>,
}

/// Outcome of a purchase request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionStatus {
    /// Units reserved; an order awaits payment.
    Reserved,
    /// Not enough units left.
    SoldOut,
    /// The user already bought in a campaign that allows one unit per user.
    Duplicate,
    /// The purchase would take the user past the campaign's per-user limit.
    LimitExceeded,
    /// The campaign is unknown, not started, ended or closed (see `reason`).
    NotActive,
    /// The user's attributes do not satisfy the campaign's rule.
    NotEligible,
    /// A lottery draw won a prize (see `prize_id`, `order_id`).
    Won,
    /// A lottery draw did not win.
    Lost,
    /// Accepted, not decided yet.
    Pending,
}

impl DecisionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::SoldOut => "sold_out",
            Self::Duplicate => "duplicate",
            Self::LimitExceeded => "limit_exceeded",
            Self::NotActive => "not_active",
            Self::NotEligible => "not_eligible",
            Self::Won => "won",
            Self::Lost => "lost",
            Self::Pending => "pending",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reserved" => Self::Reserved,
            "sold_out" => Self::SoldOut,
            "duplicate" => Self::Duplicate,
            "limit_exceeded" => Self::LimitExceeded,
            "not_active" => Self::NotActive,
            "not_eligible" => Self::NotEligible,
            "won" => Self::Won,
            "lost" => Self::Lost,
            "pending" => Self::Pending,
            _ => return None,
        })
    }
}

/// A request's decision (`GET /v1/requests/{id}`, `POST /v1/purchases`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    pub request_id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub status: DecisionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RefusalReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    /// Payment deadline of a reservation (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// The prize won, for a lottery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prize_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prize_name: Option<String>,
}

/// Where an order is in its life. `reserved` moves to exactly one of the
/// others, and never back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Reserved,
    Paid,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Paid => "paid",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// The status an order must be in for a pay or cancel to be refused
    /// with `reason` (`already_paid`, `cancelled`, `expired`), if it says.
    pub fn after_refusal(reason: RefusalReason) -> Option<Self> {
        match reason {
            RefusalReason::AlreadyPaid => Some(Self::Paid),
            RefusalReason::Cancelled => Some(Self::Cancelled),
            RefusalReason::Expired => Some(Self::Expired),
            _ => None,
        }
    }

    pub const ALL: [Self; 4] = [Self::Reserved, Self::Paid, Self::Cancelled, Self::Expired];

    /// Whether the order's units count against the stock (reserved or paid).
    pub fn holds_stock(self) -> bool {
        matches!(self, Self::Reserved | Self::Paid)
    }

    /// Statuses only move to a higher rank.
    pub fn rank(self) -> i64 {
        match self {
            Self::Reserved => 1,
            Self::Paid | Self::Cancelled | Self::Expired => 2,
        }
    }
}

/// The answer to a pay or cancel (`POST /v1/orders/{id}/pay|cancel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCommandResult {
    pub request_id: String,
    pub order_id: String,
    /// Whether the pay or cancel took effect.
    pub accepted: bool,
    /// The order's status after the command, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderStatus>,
    /// Why it was refused: `not_found`, `not_owner`, `expired`,
    /// `already_paid`, `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RefusalReason>,
}

/// `GET /v1/campaigns/{id}/users/{user_id}`: has this user bought?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserParticipation {
    pub campaign_id: String,
    pub user_id: String,
    pub bought: bool,
    /// Units (prizes) the user holds now.
    pub units: u64,
    /// Lottery draws the user made.
    pub attempts: u64,
}

/// 202 body: the request is queued; poll `GET /v1/requests/{request_id}`.
/// Also the `pending` answer of that poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RequestAccepted {
    pub request_id: String,
    pub status: DecisionStatus,
    /// Where the request stands in line, when known: on
    /// `GET /v1/requests/{request_id}` and on an answer whose `wait_ms`
    /// ran out, to whoever may see the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueuePlace>,
}

/// A pending request's place in line on its partition of the requests
/// topic. The processors decide a partition's messages in offset order, so
/// what is ahead of a request is every message before it on its partition
/// that they have not gone through yet: purchases, pay and cancel
/// commands, campaign and expiry commands alike, of any campaign that
/// shares the partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueuePlace {
    /// The request's partition of the requests topic.
    pub partition: i32,
    /// The request's offset on it.
    pub offset: i64,
    /// Messages ahead of it on its partition, not decided yet. From the
    /// processors' last reported progress (exact while they are between
    /// batches; a batch in hand is still counted), or, before they have
    /// reported any, from their consumer group's committed offset. Absent
    /// when neither is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ahead: Option<u64>,
    /// Time until the request is decided, estimated as `(ahead + 1) /
    /// decided_rate_per_sec`. Absent when the rate is unknown or 0, and
    /// when the processors have reported no progress on the partition for
    /// 30 s while messages wait (they are stalled or down: no honest
    /// estimate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_wait_ms: Option<u64>,
    /// Messages of the partition the processors decided per second,
    /// averaged over the last few seconds of work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_rate_per_sec: Option<f64>,
}

/// An order as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderView {
    pub order_id: String,
    pub request_id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub price: u64,
    pub status: OrderStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub expires_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prize_id: Option<String>,
    #[serde(default)]
    pub item_name: String,
    #[serde(default)]
    pub award_type: AwardType,
    /// The payments service's reference, once it paid the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_ref: Option<String>,
}

/// An order status word this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status {0:?} (expected reserved, paid, cancelled or expired)")]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for OrderStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_status_reads_back_and_an_unknown_word_is_an_error() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>(), Ok(s));
        }
        assert_eq!(
            "refunded".parse::<OrderStatus>(),
            Err(UnknownStatus("refunded".into()))
        );
        // The store view carries the typed status; an unknown one does not
        // deserialize into a guess.
        let view = r#"{"order_id":"o","request_id":"r","campaign_id":"c","user_id":"u",
            "quantity":1,"price":0,"status":"shipped","created_at_ms":0,"updated_at_ms":0,
            "expires_at_ms":0}"#;
        assert!(serde_json::from_str::<OrderView>(view).is_err());
    }
}
