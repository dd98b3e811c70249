//! Redis key layout. Every key of a campaign carries the hash tag `{c:<id>}`
//! so that one Lua call touches one slot and runs unchanged on Redis Cluster.
//! The processors are the only writers of the campaign keys; ingest only
//! reads them. The one key ingest writes is a pending request's
//! [`KeyLayout::position`], which no campaign state depends on.

/// Key names for a deployment (a prefix keeps tests and environments apart).
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: String,
}

/// The keys of one campaign.
#[derive(Debug, Clone)]
pub struct CampaignKeys {
    /// Hash: the campaign definition and its state flags.
    pub meta: String,
    /// Hash: `total`, `available`, `reserved`, `paid` units.
    pub stock: String,
    /// Hash: user id -> units the user holds in this campaign.
    pub users: String,
    /// Hash: request id -> the encoded decision, for idempotent redelivery.
    pub requests: String,
    /// Hash: order id -> encoded order (user, units, state, deadline, ...).
    pub orders: String,
    /// Sorted set: reserved order ids by payment deadline (ms).
    pub deadlines: String,
    /// Hash: user id -> lottery draws made.
    pub attempts: String,
    /// Hash: prize id -> units left; `<id>:total` -> units ever added.
    pub prizes: String,
    /// Hash: decision status -> requests decided so.
    pub stats: String,
}

impl CampaignKeys {
    /// The keys in the order the campaign scripts take them as KEYS.
    pub fn script_keys(&self) -> [&str; 9] {
        [
            &self.meta,
            &self.stock,
            &self.users,
            &self.requests,
            &self.orders,
            &self.deadlines,
            &self.attempts,
            &self.prizes,
            &self.stats,
        ]
    }
}

impl KeyLayout {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn campaign(&self, campaign_id: &str) -> CampaignKeys {
        let tag = format!("{}:{{c:{campaign_id}}}", self.prefix);
        CampaignKeys {
            meta: format!("{tag}:meta"),
            stock: format!("{tag}:stock"),
            users: format!("{tag}:users"),
            requests: format!("{tag}:req"),
            orders: format!("{tag}:orders"),
            deadlines: format!("{tag}:deadlines"),
            attempts: format!("{tag}:attempts"),
            prizes: format!("{tag}:prizes"),
            stats: format!("{tag}:stats"),
        }
    }

    /// Decision of one request as API JSON, readable without knowing the
    /// campaign (that is what `GET /v1/requests/{id}` has). Written by the
    /// processor after the Lua call; the authoritative copy stays in the
    /// campaign's `requests` hash.
    pub fn decision(&self, request_id: &str) -> String {
        format!("{}:decision:{request_id}", self.prefix)
    }

    /// The campaign of an order, so a pay or cancel by order id can be keyed
    /// by campaign. Written by the processor with the decision.
    pub fn order_campaign(&self, order_id: &str) -> String {
        format!("{}:order:{order_id}", self.prefix)
    }

    /// Set of every campaign id, for the expiry sweeper and system stats.
    pub fn campaigns(&self) -> String {
        format!("{}:campaigns", self.prefix)
    }

    /// Where a request sits on the requests topic and whose it is (see
    /// [`super::Position`]), for its place in line while it is pending.
    /// Written by ingest once the broker acknowledged the request, with a
    /// TTL; never read for a decision.
    pub fn position(&self, request_id: &str) -> String {
        format!("{}:position:{request_id}", self.prefix)
    }

    /// Hash: partition of the requests topic -> how far the processors are
    /// on it (see [`super::Progress`]). Written by the processors once per
    /// batch, with the batch's lookups.
    pub fn progress(&self) -> String {
        format!("{}:progress", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_keys_share_one_hash_tag() {
        let keys = KeyLayout::new("seckill").campaign("summer-1");
        for key in [
            &keys.meta,
            &keys.stock,
            &keys.users,
            &keys.requests,
            &keys.orders,
        ] {
            let open = key.find('{').expect("hash tag opens");
            let close = key.find('}').expect("hash tag closes");
            assert_eq!(&key[open + 1..close], "c:summer-1", "{key}");
        }
    }
}
