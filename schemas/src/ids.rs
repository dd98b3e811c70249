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
