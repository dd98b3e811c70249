//! Authenticated commands. Every operation on the requests topic other
//! than a purchase (create, add stock, close, publish, reset, fence, pay,
//! cancel) carries `auth`: HMAC-SHA256, in hex, over the event's canonical
//! JSON (the event as serde writes it with `auth` unset), under a command
//! key that ingest and the processors share. A processor dead-letters a
//! command whose `auth` is missing or matches none of its keys, so anyone
//! who can produce to the topic can still only buy. Several keys are
//! accepted at once so a key can be rotated: sign with the new one,
//! verify with both, then drop the old one.
//!
//! A command for stock bucket `b` > 0 of a campaign (Kafka key
//! `<id>#<b>`, see `buckets`) is signed over the canonical JSON followed
//! by `#<b>`: the bucket is covered too, so a command copied from the
//! topic and produced again under another bucket's key authenticates
//! nowhere (a copy under its own key repeats a recorded answer). Bucket 0
//! signs exactly as a campaign without buckets.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::RequestEvent;

type HmacSha256 = Hmac<Sha256>;

/// The shortest command key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// Why a command is not authentic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this command carries no authenticator (`auth`); commands are accepted only from seckill ingest and tools that hold the command key")]
    Missing,
    #[error("this command's authenticator matches none of the command keys")]
    Wrong,
}

impl RequestEvent {
    /// Whether this operation must be authenticated (all but purchases and
    /// the expiry sweeper's `expire_due`, which only expires what is due).
    pub fn needs_auth(&self) -> bool {
        !matches!(self, Self::PurchaseRequested(_) | Self::ExpireDue(_))
    }

    fn auth_slot(&mut self) -> Option<&mut Option<String>> {
        match self {
            Self::UpsertCampaign(e) => Some(&mut e.auth),
            Self::CampaignCommand(e) => Some(&mut e.auth),
            Self::OrderCommand(e) => Some(&mut e.auth),
            Self::PurchaseRequested(_) | Self::ExpireDue(_) => None,
        }
    }

    /// The authenticator the event carries, and the bytes it covers: the
    /// event with `auth` unset, then `#<bucket>` for a bucket > 0.
    fn split_auth(&self, bucket: u32) -> (Option<String>, Vec<u8>) {
        let mut bare = self.clone();
        let given = bare.auth_slot().and_then(Option::take);
        // Plain data: encoding cannot fail.
        let mut bytes = serde_json::to_vec(&bare).unwrap_or_default();
        if bucket > 0 {
            bytes.extend_from_slice(format!("#{bucket}").as_bytes());
        }
        (given, bytes)
    }

    /// Signs the command with `key` (does nothing to a purchase).
    pub fn sign(&mut self, key: &[u8]) {
        self.sign_for_bucket(key, 0);
    }

    /// Signs the command with `key` for stock bucket `bucket` of its
    /// campaign (0: the campaign's own key, as [`Self::sign`]).
    pub fn sign_for_bucket(&mut self, key: &[u8], bucket: u32) {
        if !self.needs_auth() {
            return;
        }
        let tag = tag(key, &self.split_auth(bucket).1);
        if let Some(slot) = self.auth_slot() {
            *slot = Some(tag);
        }
    }

    /// Checks the command's authenticator against every key (a purchase
    /// needs none).
    pub fn verify(&self, keys: &[Vec<u8>]) -> Result<(), AuthError> {
        self.verify_for_bucket(keys, 0)
    }

    /// Checks the authenticator of a command keyed to stock bucket
    /// `bucket` of its campaign against every key.
    pub fn verify_for_bucket(&self, keys: &[Vec<u8>], bucket: u32) -> Result<(), AuthError> {
        if !self.needs_auth() {
            return Ok(());
        }
        let (given, canonical) = self.split_auth(bucket);
        let Some(given) = given else {
            return Err(AuthError::Missing);
        };
        let Some(given) = hex_decode(&given) else {
            return Err(AuthError::Wrong);
        };
        for key in keys {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(&canonical);
            // verify_slice compares in constant time.
            if mac.verify_slice(&given).is_ok() {
                return Ok(());
            }
        }
        Err(AuthError::Wrong)
    }
}

fn tag(key: &[u8], message: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CampaignAction, CampaignCommand, PurchaseRequested};

    fn close() -> RequestEvent {
        RequestEvent::CampaignCommand(CampaignCommand {
            schema_version: 1,
            request_id: "r1".into(),
            campaign_id: "c1".into(),
            action: CampaignAction::Close,
            requested_at_ms: None,
            auth: None,
        })
    }

    #[test]
    fn a_signed_command_verifies_under_any_of_the_keys_and_nothing_else() {
        let (old, new) = (
            b"old-key-0123456789".to_vec(),
            b"new-key-0123456789".to_vec(),
        );
        let mut e = close();
        assert_eq!(e.verify(&[new.clone()]), Err(AuthError::Missing));
        e.sign(&new);
        assert_eq!(e.verify(&[new.clone()]), Ok(()));
        assert_eq!(e.verify(&[old.clone(), new.clone()]), Ok(()));
        assert_eq!(e.verify(&[old.clone()]), Err(AuthError::Wrong));
        // Survives the trip through the topic.
        let back: RequestEvent = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(back.verify(&[new.clone()]), Ok(()));
        // Any change to the command breaks it.
        let mut changed = back.clone();
        if let RequestEvent::CampaignCommand(c) = &mut changed {
            c.action = CampaignAction::Reset;
        }
        assert_eq!(changed.verify(&[new.clone()]), Err(AuthError::Wrong));
        let mut junk = back;
        if let RequestEvent::CampaignCommand(c) = &mut junk {
            c.auth = Some("zz".into());
        }
        assert_eq!(junk.verify(&[new]), Err(AuthError::Wrong));
    }

    /// A command signed for one bucket authenticates there only.
    #[test]
    fn a_bucket_command_is_bound_to_its_bucket() {
        let key = b"bucket-key-0123456789".to_vec();
        let mut e = close();
        e.sign_for_bucket(&key, 2);
        assert_eq!(e.verify_for_bucket(std::slice::from_ref(&key), 2), Ok(()));
        for other in [0, 1, 3, 20] {
            assert_eq!(
                e.verify_for_bucket(std::slice::from_ref(&key), other),
                Err(AuthError::Wrong),
                "bucket {other}"
            );
        }
        let mut zero = close();
        zero.sign_for_bucket(&key, 0);
        let mut plain = close();
        plain.sign(&key);
        assert_eq!(zero, plain);
        assert_eq!(
            plain.verify_for_bucket(std::slice::from_ref(&key), 1),
            Err(AuthError::Wrong)
        );
    }

    #[test]
    fn purchases_need_no_authenticator() {
        let p = RequestEvent::PurchaseRequested(PurchaseRequested {
            schema_version: 1,
            request_id: "r".into(),
            campaign_id: "c".into(),
            user_id: "u".into(),
            quantity: 1,
            requested_at_ms: None,
            attributes: None,
        });
        assert!(!p.needs_auth());
        assert_eq!(p.verify(&[]), Ok(()));
    }
}
