use crate::{CampaignSpec, PurchaseRequested, RequestEvent, SCHEMA_VERSION};

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
        Ok(())
    }
}

impl PurchaseRequested {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_request_id(&self.request_id)?;
        validate_campaign_id(&self.campaign_id)?;
        validate_user_id(&self.user_id)?;
        validate_quantity(self.quantity)
    }
}

impl RequestEvent {
    /// Checks a request-topic event before a processor acts on it.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let version = match self {
            Self::PurchaseRequested(p) => p.schema_version,
            Self::UpsertCampaign(u) => u.schema_version,
        };
        if version == 0 {
            return Err(invalid(
                "schema_version",
                format!("must be set (this build writes {SCHEMA_VERSION})"),
            ));
        }
        match self {
            Self::PurchaseRequested(p) => p.validate(),
            Self::UpsertCampaign(u) => {
                validate_request_id(&u.request_id)?;
                u.campaign.validate()
            }
        }
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

    #[test]
    fn quantity_bounds() {
        let mut p = PurchaseRequested {
            schema_version: 1,
            request_id: "r".into(),
            campaign_id: "c".into(),
            user_id: "u".into(),
            quantity: 0,
            requested_at_ms: None,
        };
        assert_eq!(p.validate().unwrap_err().field, "quantity");
        p.quantity = 1;
        assert!(p.validate().is_ok());
    }
}
