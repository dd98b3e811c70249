use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Body of `POST /v1/purchases`. The user comes from the request's identity,
/// never from the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PurchaseBody {
    pub campaign_id: String,
    /// Units wanted (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
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
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    /// Payment deadline of a reservation (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

/// 202 body: the request is queued; poll `GET /v1/requests/{request_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RequestAccepted {
    pub request_id: String,
    pub status: DecisionStatus,
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
    /// `reserved`, `paid`, `cancelled` or `expired`.
    pub status: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub expires_at_ms: i64,
}
