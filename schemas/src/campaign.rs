use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules::Rule;

/// What a campaign sells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum CampaignKind {
    /// First come, first served, while stock lasts.
    #[default]
    Sale,
    /// Every request is a draw; winners get a prize while prizes last.
    Lottery,
}

/// How a won item reaches the winner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum AwardType {
    /// Credited in an account (points, a game item).
    Virtual,
    /// A code sent to the user.
    Coupon,
    /// Goods shipped to an address.
    #[default]
    Physical,
}

impl AwardType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Virtual => "virtual",
            Self::Coupon => "coupon",
            Self::Physical => "physical",
        }
    }
}

/// What a draw does when the band it lands in belongs to a sold-out prize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum DrawStrategy {
    /// The sold-out prize's share becomes a loss; other odds stay as set.
    #[default]
    Fixed,
    /// The remaining prizes share the sold-out prize's probability in
    /// proportion to their own.
    Renormalize,
}

/// One prize of a lottery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PrizeSpec {
    /// Prize id: 1-64 of `A-Z a-z 0-9 _ -`, unique in the campaign.
    pub id: String,
    pub name: String,
    /// Units of this prize.
    pub stock: u64,
    /// Chance that one draw wins this prize (0-1). With `win_rate` set too,
    /// the prizes' probabilities are weights that share `win_rate`.
    pub probability: f64,
    #[serde(default)]
    pub award_type: AwardType,
    /// Price the winner pays, in minor units; default the campaign's price.
    /// A prize with price 0 is confirmed at once, with no payment step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<u64>,
}

/// A campaign as an admin defines it (`POST /v1/campaigns`), and as it travels
/// to the processor inside an `upsert_campaign` command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
pub struct CampaignSpec {
    /// Campaign id: 1-64 of `A-Z a-z 0-9 _ -`. Also the Kafka key.
    pub id: String,
    /// Display name, 1-200 characters.
    pub name: String,
    /// `sale` (default) or `lottery`.
    #[serde(default)]
    pub kind: CampaignKind,
    /// Units at the start. For a lottery with prizes: the sum of the prizes'
    /// stock.
    pub stock: u64,
    /// Units (a lottery: prizes) one user may hold in this campaign (default 1).
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
    /// How the sold item is delivered (default `physical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub award_type: Option<AwardType>,
    /// Lottery: chance that a draw wins (default 0.2 when there are no prizes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate: Option<f64>,
    /// Lottery: the prizes. Without them the campaign's own item is the one
    /// prize, won with `win_rate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prizes: Vec<PrizeSpec>,
    /// Lottery: `fixed` (default) or `renormalize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DrawStrategy>,
    /// Lottery: draws one user may make, losses included (default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts_per_user: Option<u32>,
    /// Who may take part: a rule over the user's attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligibility: Option<Rule>,
    /// Create as a draft: it takes no requests until published.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draft: bool,
    /// Stock buckets (1-64, sales only): the stock is split over this many
    /// buckets, each decided on its own partition, and a drained bucket
    /// borrows from its siblings (see `seckill_schemas::buckets`). Absent
    /// on create: chosen from `expected_requests_per_sec`, the configured
    /// rate per bucket, the partitions and the stock, and stored here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<u32>,
    /// Purchases per second expected at the peak, for the automatic choice
    /// of `buckets` (absent: one bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_requests_per_sec: Option<u64>,
}

fn default_per_user_limit() -> u32 {
    1
}

fn one_bucket() -> u32 {
    1
}

fn default_payment_timeout_secs() -> u32 {
    300
}

impl CampaignSpec {
    /// Fields a definition once had and no longer accepts, with why: an
    /// HTTP body that sends one is refused with this message rather than
    /// as an unknown field.
    pub const REFUSED_FIELDS: &'static [(&'static str, &'static str)] = &[(
        "seed",
        "lottery draws no longer use a public seed: every lottery draws with a \
         per-campaign secret that nobody sees before the campaign closes (its \
         commitment is in the campaign view from creation, the secret once it is \
         closed or ended; check the draws with `seckill verify-draws`); remove the field",
    )];

    /// Lottery win rate when no prizes are given.
    pub const DEFAULT_WIN_RATE: f64 = 0.2;

    /// The prizes as drawn: a lottery without prizes has its own item as the
    /// one prize (id `item`). Probabilities are absolute.
    pub fn draw_table(&self) -> Vec<PrizeSpec> {
        if self.kind != CampaignKind::Lottery {
            return Vec::new();
        }
        if self.prizes.is_empty() {
            return vec![PrizeSpec {
                id: "item".to_owned(),
                name: self.name.clone(),
                stock: self.stock,
                probability: self.win_rate.unwrap_or(Self::DEFAULT_WIN_RATE),
                award_type: self.award_type.unwrap_or_default(),
                price: Some(self.price),
            }];
        }
        let weights: f64 = self.prizes.iter().map(|p| p.probability).sum();
        self.prizes
            .iter()
            .map(|p| PrizeSpec {
                probability: match self.win_rate {
                    Some(rate) if weights > 0.0 => rate * p.probability / weights,
                    _ => p.probability,
                },
                price: Some(p.price.unwrap_or(self.price)),
                ..p.clone()
            })
            .collect()
    }

    /// The campaign's stock buckets (1 when unset).
    pub fn bucket_count(&self) -> u32 {
        self.buckets.unwrap_or(1).max(1)
    }

    /// The prize with this id, as drawn.
    pub fn prize(&self, id: &str) -> Option<PrizeSpec> {
        self.draw_table().into_iter().find(|p| p.id == id)
    }
}

/// Where a campaign is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    /// Created as a draft; not published yet.
    Draft,
    /// Published; its window has not opened yet.
    Scheduled,
    /// Taking requests.
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
    /// Units paid for (or won free).
    pub paid: u64,
}

/// One prize's units (`GET /v1/campaigns/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrizeStock {
    pub id: String,
    pub name: String,
    pub total: u64,
    pub available: u64,
}

/// `GET /v1/campaigns/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prizes: Vec<PrizeStock>,
    /// The definition as created (lottery settings, eligibility rule).
    pub definition: CampaignSpec,
    /// Lottery: hex SHA-256 of the campaign's draw secret, shown from
    /// creation on. It pins the secret down before any draw without
    /// telling it (see `seckill_schemas::DrawSecret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draw_commitment: Option<String>,
    /// Stock buckets the campaign's stock is split over (1: none).
    #[serde(default = "one_bucket")]
    pub buckets: u32,
    /// With several buckets: each bucket's units, by bucket number (their
    /// sum is `stock`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bucket_stock: Vec<StockView>,
    /// Lottery: the draw secret (hex), shown only once the campaign is
    /// closed or its window has ended. Every draw is
    /// `draw_point(draw_secret, request_id)`; `seckill verify-draws`
    /// recomputes them all and checks the secret against
    /// `draw_commitment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draw_secret: Option<String>,
}
