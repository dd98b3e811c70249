use uuid::Uuid;

// Fixed namespaces so every process derives the same ids.
const REQUEST_NS: Uuid = Uuid::from_u128(0x5ec1_0000_7265_7175_6573_7400_0000_0001);
const ORDER_NS: Uuid = Uuid::from_u128(0x5ec1_0000_6f72_6465_7200_0000_0000_0002);

/// The order id of a request. Derived, not drawn, so every replay of the
/// request writes the same order row.
pub fn order_id_for(request_id: &str) -> String {
    Uuid::new_v5(&ORDER_NS, request_id.as_bytes()).to_string()
}

/// The request id for a client's `Idempotency-Key`, scoped by user and by
/// campaign: two users who pick the same key never collide, and one user's
/// key reused on another campaign is another request (with another order).
pub fn request_id_for_key(user_id: &str, campaign_id: &str, idempotency_key: &str) -> String {
    let mut name =
        Vec::with_capacity(user_id.len() + campaign_id.len() + idempotency_key.len() + 2);
    name.extend_from_slice(user_id.as_bytes());
    name.push(0);
    name.extend_from_slice(campaign_id.as_bytes());
    name.push(0);
    name.extend_from_slice(idempotency_key.as_bytes());
    Uuid::new_v5(&REQUEST_NS, &name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_scoped() {
        assert_eq!(order_id_for("r1"), order_id_for("r1"));
        assert_ne!(order_id_for("r1"), order_id_for("r2"));
        assert_eq!(
            request_id_for_key("u1", "c", "k"),
            request_id_for_key("u1", "c", "k")
        );
        assert_ne!(
            request_id_for_key("u1", "c", "k"),
            request_id_for_key("u2", "c", "k")
        );
        assert_ne!(
            request_id_for_key("u1", "c1", "k"),
            request_id_for_key("u1", "c2", "k")
        );
        assert_ne!(
            request_id_for_key("u", "ab", "c"),
            request_id_for_key("u", "a", "bc")
        );
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            request_id_for_key("ab", "c", "k"),
            request_id_for_key("a", "bc", "k")
        );
    }
}

/// Where a lottery draw lands, uniform in [0, 1): a function of the
/// campaign's seed and the request id only, so a redelivered request draws
/// the same result on any processor.
pub fn draw_point(seed: &str, request_id: &str) -> f64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update([0u8]);
    h.update(request_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 random bits: every value is an exact double below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod draw_tests {
    use super::draw_point;

    #[test]
    fn draws_repeat_and_spread_evenly() {
        assert_eq!(draw_point("s", "r1"), draw_point("s", "r1"));
        assert_ne!(draw_point("s", "r1"), draw_point("t", "r1"));
        let n = 100_000;
        let below: usize = (0..n)
            .filter(|i| draw_point("seed", &i.to_string()) < 0.2)
            .count();
        // Binomial(100000, 0.2): sd = 126; 4 sd either side.
        assert!((19_496..=20_504).contains(&below), "{below}");
    }
}
