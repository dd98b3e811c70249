use crate::{order_id_for, OrderEvent};
use crate::{
    CampaignAction, CampaignKind, CampaignSpec, OrderAction, PurchaseRequested, RequestEvent,
    SCHEMA_VERSION,
};

/// Why an event or body was refused; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ValidationError {
    ValidationError {
        field,
        problem: problem.into(),
    }
}

/// Campaign ids are Kafka keys and parts of Redis keys: 1-64 of
/// `A-Z a-z 0-9 _ -`.
pub fn validate_campaign_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() || id.len() > 64 {
        return Err(invalid("campaign_id", "must be 1-64 characters long"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            "campaign_id",
            format!("{id:?} may only contain A-Z, a-z, 0-9, '_' and '-'"),
        ));
    }
    Ok(())
}

/// User ids: 1-128 printable ASCII characters without spaces or `|`
/// (the Lua script's field separator).
pub fn validate_user_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() || id.len() > 128 {
        return Err(invalid("user_id", "must be 1-128 characters long"));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic() && b != b'|') {
        return Err(invalid(
            "user_id",
            "may only contain printable ASCII characters other than '|' and space",
        ));
    }
    Ok(())
}

fn validate_request_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'|') {
        return Err(invalid(
            "request_id",
            "must be 1-128 printable ASCII characters other than '|'",
        ));
    }
    Ok(())
}

/// The longest payment reference, in characters (bytes: ASCII only).
pub const MAX_PAYMENT_REF: usize = 128;

/// Payment references: 1-128 printable ASCII characters (space to `~`).
pub fn validate_payment_ref(r: &str) -> Result<(), ValidationError> {
    if r.is_empty() || r.len() > MAX_PAYMENT_REF {
        return Err(invalid(
            "payment_ref",
            format!(
                "must be 1-{MAX_PAYMENT_REF} characters long, got {}",
                r.chars().count()
            ),
        ));
    }
    if let Some(bad) = r.chars().find(|c| !matches!(c, ' '..='~')) {
        return Err(invalid(
            "payment_ref",
            format!("may only contain printable ASCII characters (space to '~'), not {bad:?}"),
        ));
    }
    Ok(())
}

/// The largest quantity one request may ask for.
pub const MAX_QUANTITY: u32 = 1000;

fn validate_quantity(quantity: u32) -> Result<(), ValidationError> {
    if quantity == 0 || quantity > MAX_QUANTITY {
        return Err(invalid(
            "quantity",
            format!("must be between 1 and {MAX_QUANTITY}, got {quantity}"),
        ));
    }
    Ok(())
}

impl CampaignSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_campaign_id(&self.id).map_err(|e| invalid("id", e.problem))?;
        let name_len = self.name.chars().count();
        if name_len == 0 || name_len > 200 {
            return Err(invalid("name", "must be 1-200 characters long"));
        }
        if self.stock > 1_000_000_000 {
            return Err(invalid("stock", "must be at most 1000000000"));
        }
        if self.per_user_limit == 0 || self.per_user_limit > MAX_QUANTITY {
            return Err(invalid(
                "per_user_limit",
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        if self.ends_at <= self.starts_at {
            return Err(invalid("ends_at", "must be later than starts_at"));
        }
        if self.payment_timeout_secs == 0 || self.payment_timeout_secs > 86_400 {
            return Err(invalid(
                "payment_timeout_secs",
                "must be between 1 and 86400",
            ));
        }
        if let Some(rule) = &self.eligibility {
            rule.check()
                .map_err(|e| invalid("eligibility", format!("the rule {e}")))?;
        }
        if let Some(b) = self.buckets {
            if b == 0 || b > crate::buckets::MAX_BUCKETS {
                return Err(invalid(
                    "buckets",
                    format!(
                        "must be between 1 and {}, got {b}",
                        crate::buckets::MAX_BUCKETS
                    ),
                ));
            }
            if b > 1 && self.kind != CampaignKind::Sale {
                return Err(invalid(
                    "buckets",
                    "stock buckets are for sales: a lottery's prizes stay in one bucket (leave \
                     buckets out or set it to 1)",
                ));
            }
        }
        if self.expected_requests_per_sec == Some(0) {
            return Err(invalid(
                "expected_requests_per_sec",
                "must be at least 1 when set",
            ));
        }
        if self.kind == CampaignKind::Sale {
            let lottery_only = self.win_rate.is_some()
                || !self.prizes.is_empty()
                || self.strategy.is_some()
                || self.max_attempts_per_user.is_some();
            if lottery_only {
                return Err(invalid(
                    "kind",
                    "win_rate, prizes, strategy and max_attempts_per_user need kind \"lottery\"",
                ));
            }
            return Ok(());
        }
        if let Some(rate) = self.win_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(invalid("win_rate", "must be between 0 and 1"));
            }
        }
        if matches!(self.max_attempts_per_user, Some(0)) {
            return Err(invalid(
                "max_attempts_per_user",
                "must be at least 1 when set",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.prizes {
            validate_campaign_id(&p.id)
                .map_err(|e| invalid("prizes", format!("prize id: {}", e.problem)))?;
            if p.id.ends_with(":total") || !seen.insert(p.id.as_str()) {
                return Err(invalid(
                    "prizes",
                    format!("prize id {:?} is used twice", p.id),
                ));
            }
            if p.name.is_empty() || p.name.len() > 200 {
                return Err(invalid(
                    "prizes",
                    format!("prize {:?} needs a name of 1-200 characters", p.id),
                ));
            }
            if !(0.0..=1.0).contains(&p.probability) || p.probability.is_nan() {
                return Err(invalid(
                    "prizes",
                    format!("prize {:?}: probability must be between 0 and 1", p.id),
                ));
            }
        }
        if !self.prizes.is_empty() {
            let sum: f64 = self.prizes.iter().map(|p| p.probability).sum();
            if self.win_rate.is_none() && sum > 1.0 + 1e-9 {
                return Err(invalid(
                    "prizes",
                    format!("probabilities add up to {sum}, more than 1 (or set win_rate to use them as weights)"),
                ));
            }
            let units: u64 = self.prizes.iter().map(|p| p.stock).sum();
            if units != self.stock {
                return Err(invalid(
                    "stock",
                    format!("must equal the prizes' stock added up ({units})"),
                ));
            }
        }
        Ok(())
    }
}

impl PurchaseRequested {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_request_id(&self.request_id)?;
        validate_campaign_id(&self.campaign_id)?;
        validate_user_id(&self.user_id)?;
        validate_quantity(self.quantity)?;
        if let Some(a) = &self.attributes {
            if a.len() > 32 || serde_json::to_string(a).map_or(0, |s| s.len()) > 4096 {
                return Err(invalid(
                    "attributes",
                    "at most 32 attributes and 4096 bytes of JSON",
                ));
            }
        }
        Ok(())
    }
}

impl RequestEvent {
    /// Checks a request-topic event before a processor acts on it.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.schema_version() == 0 {
            return Err(invalid(
                "schema_version",
                format!("must be set (this build writes {SCHEMA_VERSION})"),
            ));
        }
        validate_request_id(self.request_id())?;
        validate_campaign_id(self.campaign_id())?;
        match self {
            Self::PurchaseRequested(p) => p.validate(),
            Self::UpsertCampaign(u) => u.campaign.validate(),
            Self::CampaignCommand(c) => match &c.action {
                CampaignAction::AddStock { quantity, .. }
                    if *quantity == 0 || *quantity > 1_000_000_000 =>
                {
                    Err(invalid("quantity", "must be between 1 and 1000000000"))
                }
                CampaignAction::Fence { token, until_ms } => {
                    if token.is_empty()
                        || token.len() > 64
                        || !token
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        Err(invalid("token", "must be 1-64 letters, digits or '-'"))
                    } else if *until_ms <= 0 {
                        Err(invalid("until_ms", "must be a time in ms since the epoch"))
                    } else {
                        Ok(())
                    }
                }
                CampaignAction::Borrow {
                    from, want, ask, ..
                } => {
                    if *from >= crate::buckets::MAX_BUCKETS
                        || *ask == 0
                        || *ask >= crate::buckets::MAX_BUCKETS
                    {
                        Err(invalid("from", "not a stock bucket of the campaign"))
                    } else if *want == 0 || *want > 1_000_000_000 {
                        Err(invalid("want", "must be between 1 and 1000000000"))
                    } else {
                        Ok(())
                    }
                }
                CampaignAction::Transfer {
                    from, units, ask, ..
                } => {
                    if *from >= crate::buckets::MAX_BUCKETS
                        || *ask == 0
                        || *ask >= crate::buckets::MAX_BUCKETS
                    {
                        Err(invalid("from", "not a stock bucket of the campaign"))
                    } else if *units > 1_000_000_000 {
                        Err(invalid("units", "must be at most 1000000000"))
                    } else {
                        Ok(())
                    }
                }
                _ => Ok(()),
            },
            Self::OrderCommand(o) => {
                validate_user_id(&o.user_id)?;
                validate_request_id(&o.order_id).map_err(|e| invalid("order_id", e.problem))?;
                match (o.action, &o.payment_ref) {
                    (OrderAction::Pay, Some(r)) => validate_payment_ref(r),
                    (OrderAction::Pay, None) => Err(invalid(
                        "payment_ref",
                        "a pay needs the payment's reference (1-128 printable ASCII characters)",
                    )),
                    (OrderAction::Cancel, Some(_)) => Err(invalid(
                        "payment_ref",
                        "a cancel carries no payment reference; leave it out",
                    )),
                    (OrderAction::Cancel, None) => Ok(()),
                }
            }
            Self::ExpireDue(_) => Ok(()),
        }
    }
}

impl OrderEvent {
    /// Checks an orders-topic event before a sink stores it: ids well
    /// formed, the order id the one derived from its request, a real
    /// quantity.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_request_id(self.request_id())?;
        if let Some((_, r)) = self.order_state() {
            if let Some(p) = r.payment_ref {
                validate_payment_ref(p)?;
            }
            validate_campaign_id(r.campaign_id)?;
            validate_user_id(r.user_id)?;
            validate_quantity(r.quantity)?;
            validate_request_id(r.purchase_request_id)?;
            if r.order_id != order_id_for(r.purchase_request_id) {
                return Err(invalid(
                    "order_id",
                    format!(
                        "{:?} is not the order id of request {:?}",
                        r.order_id, r.purchase_request_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_ids_are_checked() {
        assert!(validate_campaign_id("flash-2026_11").is_ok());
        assert!(validate_campaign_id("").is_err());
        assert!(validate_campaign_id("a b").is_err());
        assert!(validate_campaign_id("a}b").is_err());
        assert!(validate_campaign_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn user_ids_refuse_the_separator() {
        assert!(validate_user_id("alice@example.com").is_ok());
        assert!(validate_user_id("a|b").is_err());
        assert!(validate_user_id("").is_err());
    }

    fn order_command(action: OrderAction, payment_ref: Option<&str>) -> RequestEvent {
        RequestEvent::OrderCommand(crate::OrderCommand {
            schema_version: 1,
            request_id: "cmd-1".into(),
            campaign_id: "c".into(),
            order_id: "o-1".into(),
            user_id: "payments".into(),
            action,
            requested_at_ms: None,
            payment_ref: payment_ref.map(str::to_owned),
            auth: None,
        })
    }

    #[test]
    fn a_pay_needs_a_payment_ref_and_a_cancel_carries_none() {
        let err = |e: RequestEvent| e.validate().expect_err("must be refused");
        assert!(order_command(OrderAction::Pay, Some("pi_3N|x 42~"))
            .validate()
            .is_ok());
        assert!(order_command(OrderAction::Pay, Some(&"r".repeat(128)))
            .validate()
            .is_ok());
        assert!(order_command(OrderAction::Cancel, None).validate().is_ok());

        let missing = err(order_command(OrderAction::Pay, None));
        assert_eq!(missing.field, "payment_ref");
        assert!(missing.problem.contains("a pay needs"), "{missing}");
        let empty = err(order_command(OrderAction::Pay, Some("")));
        assert!(empty.problem.contains("1-128"), "{empty}");
        let long = err(order_command(OrderAction::Pay, Some(&"r".repeat(129))));
        assert!(long.problem.contains("got 129"), "{long}");
        for bad in ["tab\there", "new\nline", "caf\u{e9}", "del\u{7f}"] {
            let e = err(order_command(OrderAction::Pay, Some(bad)));
            assert_eq!(e.field, "payment_ref", "{bad:?}");
            assert!(e.problem.contains("printable ASCII"), "{bad:?}: {e}");
        }
        let cancel = err(order_command(OrderAction::Cancel, Some("pi_1")));
        assert_eq!(cancel.field, "payment_ref");
        assert!(cancel.problem.contains("a cancel carries no"), "{cancel}");
    }

    #[test]
    fn quantity_bounds() {
        let mut p = PurchaseRequested {
            schema_version: 1,
            request_id: "r".into(),
            campaign_id: "c".into(),
            user_id: "u".into(),
            quantity: 0,
            requested_at_ms: None,
            attributes: None,
        };
        assert_eq!(p.validate().unwrap_err().field, "quantity");
        p.quantity = 1;
        assert!(p.validate().is_ok());
    }
}
