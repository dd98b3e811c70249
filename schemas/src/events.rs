use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{CampaignSpec, Decision, DecisionStatus};

/// A message on the requests topic (key = campaign id). Purchases and every
/// command that changes a campaign share the topic so that they are ordered
/// per campaign and the partition's processor is the campaign's only writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestEvent {
    PurchaseRequested(PurchaseRequested),
    UpsertCampaign(UpsertCampaign),
}

impl RequestEvent {
    pub fn request_id(&self) -> &str {
        match self {
            Self::PurchaseRequested(p) => &p.request_id,
            Self::UpsertCampaign(u) => &u.request_id,
        }
    }

    pub fn campaign_id(&self) -> &str {
        match self {
            Self::PurchaseRequested(p) => &p.campaign_id,
            Self::UpsertCampaign(u) => &u.campaign.id,
        }
    }
}

/// A user asks for units of a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PurchaseRequested {
    pub schema_version: u32,
    /// Unique per purchase attempt; redelivering the same id yields the same
    /// decision. Producers that retry must reuse it.
    pub request_id: String,
    pub campaign_id: String,
    pub user_id: String,
    /// Units wanted, at least 1 (default 1).
    #[serde(default = "one")]
    pub quantity: u32,
    /// When the request was accepted upstream (unix ms); the message
    /// timestamp is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at_ms: Option<i64>,
}

fn one() -> u32 {
    1
}

/// Create (prewarm) a campaign. Applying the same definition twice is a
/// no-op; a different definition under an existing id is a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpsertCampaign {
    pub schema_version: u32,
    pub request_id: String,
    pub campaign: CampaignSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at_ms: Option<i64>,
}

/// A message on the orders topic (key = campaign id): one per decided
/// request, plus the results of campaign commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderEvent {
    Reserved(Reserved),
    Rejected(Rejected),
    CampaignApplied(CampaignApplied),
}

impl OrderEvent {
    pub fn request_id(&self) -> &str {
        match self {
            Self::Reserved(e) => &e.request_id,
            Self::Rejected(e) => &e.request_id,
            Self::CampaignApplied(e) => &e.request_id,
        }
    }

    /// The decision this event announces, for purchase requests.
    pub fn decision(&self) -> Option<Decision> {
        match self {
            Self::Reserved(e) => Some(Decision {
                request_id: e.request_id.clone(),
                campaign_id: e.campaign_id.clone(),
                user_id: e.user_id.clone(),
                status: DecisionStatus::Reserved,
                reason: None,
                order_id: Some(e.order_id.clone()),
                quantity: Some(e.quantity),
                expires_at_ms: Some(e.expires_at_ms),
            }),
            Self::Rejected(e) => Some(Decision {
                request_id: e.request_id.clone(),
                campaign_id: e.campaign_id.clone(),
                user_id: e.user_id.clone(),
                status: e.status,
                reason: Some(e.reason.clone()),
                order_id: None,
                quantity: None,
                expires_at_ms: None,
            }),
            Self::CampaignApplied(_) => None,
        }
    }
}

/// Units were reserved for a user; the order awaits payment until
/// `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Reserved {
    pub schema_version: u32,
    pub request_id: String,
    /// Derived from `request_id`, so replays name the same order.
    pub order_id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub quantity: u32,
    /// Unit price in minor currency units.
    pub price: u64,
    pub requested_at_ms: i64,
    /// Redis server time of the decision.
    pub decided_at_ms: i64,
    /// Payment deadline (Redis server time).
    pub expires_at_ms: i64,
}

/// A purchase was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Rejected {
    pub schema_version: u32,
    pub request_id: String,
    pub campaign_id: String,
    pub user_id: String,
    /// `sold_out`, `duplicate`, `limit_exceeded` or `not_active`.
    pub status: DecisionStatus,
    /// Machine-readable detail, e.g. `not_started`, `ended`, `unknown_campaign`.
    pub reason: String,
    pub requested_at_ms: i64,
    pub decided_at_ms: i64,
}

/// What applying an `upsert_campaign` command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignOutcome {
    Created,
    Unchanged,
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CampaignApplied {
    pub schema_version: u32,
    pub request_id: String,
    pub campaign_id: String,
    pub outcome: CampaignOutcome,
    pub decided_at_ms: i64,
}
