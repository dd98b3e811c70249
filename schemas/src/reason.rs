//! Why a request or command was refused: one closed list, shared by the
//! decision script (which writes the words), the events, the HTTP answers
//! and the tools. A word this build does not know is an error wherever it is
//! read, never a guess.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Machine-readable reason of a refusal (or a lost draw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    // Purchases and draws.
    /// No campaign with this id exists (yet).
    UnknownCampaign,
    /// The campaign is a draft, not published.
    Draft,
    /// The campaign was closed.
    Closed,
    /// Its window has not opened.
    NotStarted,
    /// Its window has closed.
    Ended,
    /// The user's attributes do not satisfy the eligibility rule.
    NotEligible,
    /// The user made every lottery draw the campaign allows.
    MaxAttempts,
    /// The user bought already (campaigns with one unit per user).
    AlreadyBought,
    /// The purchase would pass the per-user limit.
    PerUserLimit,
    /// Not enough units left.
    SoldOut,
    /// A lottery request arrived without a draw point.
    NoDrawPoint,
    /// A lottery draw did not win.
    Lost,
    /// The request id was used before for a different request.
    RequestIdReused,
    // Campaign commands.
    /// A create named an existing campaign with a different definition.
    DifferentDefinition,
    /// Stock was added to a prize the lottery does not have.
    UnknownPrize,
    // Pay and cancel.
    /// No such order.
    NotFound,
    /// The order belongs to another user.
    NotOwner,
    /// The order is paid already.
    AlreadyPaid,
    /// The order was cancelled.
    Cancelled,
    /// The payment deadline passed; the units went back on sale.
    Expired,
    /// The decision script does not know the operation.
    UnknownOperation,
}

/// A reason word this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown refusal reason {0:?}")]
pub struct UnknownReason(pub String);

impl RefusalReason {
    pub const ALL: [Self; 21] = [
        Self::UnknownCampaign,
        Self::Draft,
        Self::Closed,
        Self::NotStarted,
        Self::Ended,
        Self::NotEligible,
        Self::MaxAttempts,
        Self::AlreadyBought,
        Self::PerUserLimit,
        Self::SoldOut,
        Self::NoDrawPoint,
        Self::Lost,
        Self::RequestIdReused,
        Self::DifferentDefinition,
        Self::UnknownPrize,
        Self::NotFound,
        Self::NotOwner,
        Self::AlreadyPaid,
        Self::Cancelled,
        Self::Expired,
        Self::UnknownOperation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCampaign => "unknown_campaign",
            Self::Draft => "draft",
            Self::Closed => "closed",
            Self::NotStarted => "not_started",
            Self::Ended => "ended",
            Self::NotEligible => "not_eligible",
            Self::MaxAttempts => "max_attempts",
            Self::AlreadyBought => "already_bought",
            Self::PerUserLimit => "per_user_limit",
            Self::SoldOut => "sold_out",
            Self::NoDrawPoint => "no_draw_point",
            Self::Lost => "lost",
            Self::RequestIdReused => "request_id_reused",
            Self::DifferentDefinition => "different_definition",
            Self::UnknownPrize => "unknown_prize",
            Self::NotFound => "not_found",
            Self::NotOwner => "not_owner",
            Self::AlreadyPaid => "already_paid",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::UnknownOperation => "unknown_operation",
        }
    }
}

impl std::str::FromStr for RefusalReason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_as_itself_and_an_unknown_word_is_an_error() {
        for r in RefusalReason::ALL {
            assert_eq!(r.as_str().parse::<RefusalReason>(), Ok(r));
            // The wire form (serde) is the same word.
            assert_eq!(
                serde_json::to_string(&r).expect("serializes"),
                format!("\"{}\"", r.as_str())
            );
        }
        assert_eq!(
            "sold-out".parse::<RefusalReason>(),
            Err(UnknownReason("sold-out".into()))
        );
    }
}
