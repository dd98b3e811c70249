use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a campaign sells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum CampaignKind {
    /// First come, first served, while stock lasts.
    #[default]
    Sale,
}

/// A campaign as an admin defines it (`POST /v1/campaigns`), and as it travels
/// to the processor inside an `upsert_campaign` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CampaignSpec {
    /// Campaign id: 1-64 of `A-Z a-z 0-9 _ -`. Also the Kafka key.
    pub id: String,
    /// Display name, 1-200 characters.
    pub name: String,
    /// `sale` (default).
    #[serde(default)]
    pub kind: CampaignKind,
    /// Units for sale at the start.
    pub stock: u64,
    /// Units one user may hold in this campaign (default 1).
    #[serde(default = "default_per_user_limit")]
    pub per_user_limit: u32,
    /// Start of the sale window (RFC 3339).
    pub starts_at: DateTime<Utc>,
    /// End of the sale window (RFC 3339), after `starts_at`.
    pub ends_at: DateTime<Utc>,
    /// Seconds a reservation waits for payment (default 300).
    #[serde(default = "default_payment_timeout_secs")]
    pub payment_timeout_secs: u32,
    /// Unit price in minor currency units (cents), default 0.
    #[serde(default)]
    pub price: u64,
}

fn default_per_user_limit() -> u32 {
    1
}

fn default_payment_timeout_secs() -> u32 {
    300
}

/// Where a campaign is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    /// Defined; its window has not opened yet.
    Scheduled,
    /// Taking purchases.
    Active,
    /// Ended by time or closed by an admin.
    Closed,
}

/// Units of a campaign by where they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub struct StockView {
    /// Units ever added.
    pub total: u64,
    /// Units that can still be reserved.
    pub available: u64,
    /// Units held by reservations awaiting payment.
    pub reserved: u64,
    /// Units paid for.
    pub paid: u64,
}

/// `GET /v1/campaigns/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CampaignView {
    pub id: String,
    pub name: String,
    pub kind: CampaignKind,
    pub state: CampaignState,
    pub stock: StockView,
    pub per_user_limit: u32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub payment_timeout_secs: u32,
    pub price: u64,
}
