//! Lottery draws nobody can predict and everybody can check.
//!
//! Every lottery campaign has a draw secret:
//!
//! ```text
//! secret     = HMAC-SHA256(draw key, "seckill-draw-v1" || 0x00 || campaign_id)
//! commitment = hex(SHA-256(secret))
//! draw point = draw_point(hex(secret), request_id)     uniform in [0, 1)
//! ```
//!
//! A draw is a function of the secret and the request id only, so a
//! redelivered request draws the same result on any processor. Clients
//! choose their Idempotency-Keys (and so their request ids), but without
//! the secret they cannot tell a winning request id from a losing one.
//!
//! **Where the secret is kept: nowhere.** It is never written to Redis, to
//! a topic or to the store. Whoever holds the draw key (the processors,
//! which draw with it, and ingest, which shows the commitment and later the
//! secret) recomputes it from the draw key file whenever it needs it.
//! Ingest shows the commitment in the campaign view from creation on, and
//! the secret itself only once the campaign is closed or its window has
//! ended (when no draw can be decided any more); `seckill verify-draws`
//! then recomputes every recorded draw from the revealed secret and checks
//! the secret against the commitment.
//!
//! **A Redis loss** costs nothing here: there is nothing to restore.
//! `seckill reconcile --repair` rebuilds the campaign's state from the
//! store and the orders log, and the secret is derived from the key again.
//!
//! **The draw key must never be rotated while a lottery is open**: a
//! redelivered request must draw what it drew the first time, and the
//! published commitment must keep matching. (Without a draw key file the
//! key is derived from the first command key, see
//! [`draw_key_from_command_key`]; rotating that key rotates the draw key
//! too, so configure a draw key file before rotating command keys.)

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::auth::hex_decode;

type HmacSha256 = Hmac<Sha256>;

/// Domain separator of the per-campaign draw secret (version 1).
pub const DRAW_SECRET_DOMAIN: &[u8] = b"seckill-draw-v1";

/// Domain separator of the draw key derived from a command key.
pub const DRAW_KEY_DOMAIN: &[u8] = b"seckill-draw-key";

/// The shortest draw key accepted, in bytes.
pub const MIN_DRAW_KEY_BYTES: usize = crate::MIN_KEY_BYTES;

/// A campaign's draw secret (32 bytes). Its `Debug` shows the commitment,
/// never the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DrawSecret([u8; 32]);

impl DrawSecret {
    /// The secret of `campaign_id` under `draw_key`:
    /// HMAC-SHA256(draw key, "seckill-draw-v1" || 0x00 || campaign_id).
    pub fn derive(draw_key: &[u8], campaign_id: &str) -> Self {
        let mut mac = HmacSha256::new_from_slice(draw_key).expect("HMAC takes any key length");
        mac.update(DRAW_SECRET_DOMAIN);
        mac.update(&[0]);
        mac.update(campaign_id.as_bytes());
        Self(mac.finalize().into_bytes().into())
    }

    /// A secret as [`DrawSecret::to_hex`] writes it (64 hex digits, either
    /// case), e.g. the one a campaign view reveals.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes: [u8; 32] = hex_decode(hex)?.try_into().ok()?;
        Some(Self(bytes))
    }

    /// The secret in lower-case hex: what is revealed, and what draws use.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// hex(SHA-256(secret)): published before any draw, it pins the secret
    /// down without telling it.
    pub fn commitment(&self) -> String {
        commitment(&self.0)
    }

    /// Whether this secret is the one `commitment` (hex, either case)
    /// commits to.
    pub fn matches(&self, commitment: &str) -> bool {
        self.commitment().eq_ignore_ascii_case(commitment.trim())
    }

    /// Where the draw of `request_id` lands.
    pub fn point(&self, request_id: &str) -> f64 {
        draw_point(&self.to_hex(), request_id)
    }
}

impl std::fmt::Debug for DrawSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DrawSecret(commitment {})", self.commitment())
    }
}

/// hex(SHA-256(secret)), the commitment to a draw secret (its raw bytes).
pub fn commitment(secret: &[u8]) -> String {
    to_hex(&Sha256::digest(secret))
}

/// The draw key used when no draw key file is configured:
/// HMAC-SHA256(command key, "seckill-draw-key"). Existing setups keep
/// working, and the domain separator keeps the draw secrets apart from the
/// command authenticators made with the same key.
pub fn draw_key_from_command_key(command_key: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(command_key).expect("HMAC takes any key length");
    mac.update(DRAW_KEY_DOMAIN);
    mac.finalize().into_bytes().to_vec()
}

/// Where a lottery draw lands, uniform in [0, 1): SHA-256 of the
/// campaign's secret (hex) and the request id, so a redelivered request
/// draws the same result on any processor, and nobody without the secret
/// can tell where a request id lands.
pub fn draw_point(secret_hex: &str, request_id: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(secret_hex.as_bytes());
    h.update([0u8]);
    h.update(request_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 random bits: every value is an exact double below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"draw-key-0123456789abcdef";

    #[test]
    fn the_secret_is_the_specified_hmac_and_is_scoped_by_key_and_campaign() {
        let s = DrawSecret::derive(KEY, "c1");
        // Recomputed by hand from the definition.
        let mut mac = HmacSha256::new_from_slice(KEY).expect("any key length");
        mac.update(b"seckill-draw-v1\0c1");
        let want: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(s.as_bytes(), &want);
        assert_eq!(s, DrawSecret::derive(KEY, "c1"), "deterministic");
        assert_ne!(s, DrawSecret::derive(KEY, "c2"), "per campaign");
        assert_ne!(s, DrawSecret::derive(b"another-key-0123456789", "c1"));
        // The 0x00 separator: the domain and the id cannot run together.
        let mut mac = HmacSha256::new_from_slice(KEY).expect("any key length");
        mac.update(b"seckill-draw-v1c1");
        let unseparated: [u8; 32] = mac.finalize().into_bytes().into();
        assert_ne!(s.as_bytes(), &unseparated);
    }

    #[test]
    fn the_commitment_is_sha256_of_the_secret_and_checks_a_revealed_one() {
        let s = DrawSecret::derive(KEY, "c1");
        let hex = s.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(s.commitment(), to_hex(&Sha256::digest(s.as_bytes())));
        assert_eq!(s.commitment(), commitment(s.as_bytes()));
        assert_ne!(
            s.commitment(),
            hex,
            "the commitment does not tell the secret"
        );
        // A revealed secret reads back and matches its commitment only.
        let back = DrawSecret::from_hex(&hex).expect("hex");
        assert_eq!(back, s);
        assert_eq!(DrawSecret::from_hex(&hex.to_uppercase()), Some(s.clone()));
        assert!(back.matches(&s.commitment()));
        assert!(back.matches(&s.commitment().to_uppercase()));
        assert!(!DrawSecret::derive(KEY, "c2").matches(&s.commitment()));
        assert_eq!(DrawSecret::from_hex(&hex[..62]), None);
        assert_eq!(DrawSecret::from_hex(&format!("{}zz", &hex[..62])), None);
        // Known answer: SHA-256 of 32 zero bytes.
        assert_eq!(
            commitment(&[0u8; 32]),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        // Debug never prints the secret.
        assert!(!format!("{s:?}").contains(&hex));
    }

    #[test]
    fn the_fallback_draw_key_is_domain_separated_from_the_command_key() {
        let command = b"command-key-0123456789".to_vec();
        let k = draw_key_from_command_key(&command);
        assert_eq!(k, draw_key_from_command_key(&command));
        assert!(k.len() >= MIN_DRAW_KEY_BYTES);
        assert_ne!(k, command);
        let mut mac = HmacSha256::new_from_slice(&command).expect("any key length");
        mac.update(b"seckill-draw-key");
        assert_eq!(k, mac.finalize().into_bytes().to_vec());
        assert_ne!(k, draw_key_from_command_key(b"other-command-key-0123"));
    }

    #[test]
    fn draws_repeat_and_spread_evenly() {
        let s = DrawSecret::derive(KEY, "c1");
        assert_eq!(s.point("r1"), draw_point(&s.to_hex(), "r1"));
        assert_eq!(s.point("r1"), s.point("r1"));
        assert_ne!(s.point("r1"), DrawSecret::derive(KEY, "c2").point("r1"));
        assert_eq!(draw_point("s", "r1"), draw_point("s", "r1"));
        assert_ne!(draw_point("s", "r1"), draw_point("t", "r1"));
        let n = 100_000;
        let below: usize = (0..n).filter(|i| s.point(&i.to_string()) < 0.2).count();
        // Binomial(100000, 0.2): sd = 126; 4 sd either side.
        assert!((19_496..=20_504).contains(&below), "{below}");
    }
}
