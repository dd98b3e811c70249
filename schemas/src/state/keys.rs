//! Redis key layout. Every key of a campaign carries the hash tag `{c:<id>}`
//! so that one Lua call touches one slot and runs unchanged on Redis Cluster.
//! The processors are the only writers of these keys; ingest only reads them.
//! A stock bucket `b` > 0 of a campaign is keyed like a campaign whose id is
//! `<id>#<b>` ([`KeyLayout::bucket`], `crate::buckets`).

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
    /// Hash, stock buckets: the borrowing round (`round`, `open`, `ask`).
    pub loans: String,
    /// List, stock buckets: purchases waiting for units from a sibling
    /// bucket, in arrival order.
    pub parked: String,
}

impl CampaignKeys {
    /// The keys in the order the campaign scripts take them as KEYS.
    pub fn script_keys(&self) -> [&str; 11] {
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
            &self.loans,
            &self.parked,
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
            loans: format!("{tag}:loans"),
            parked: format!("{tag}:parked"),
        }
    }

    /// The keys of stock bucket `bucket` of a campaign (bucket 0: the
    /// campaign's own, [`Self::campaign`]).
    pub fn bucket(&self, campaign_id: &str, bucket: u32) -> CampaignKeys {
        self.campaign(&crate::buckets::bucket_key(campaign_id, bucket))
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
        // Bucket 0 is the campaign itself; bucket 2 has a tag of its own.
        assert_eq!(
            KeyLayout::new("seckill").bucket("summer-1", 0).stock,
            keys.stock
        );
        assert_eq!(
            KeyLayout::new("seckill").bucket("summer-1", 2).stock,
            "seckill:{c:summer-1#2}:stock"
        );
    }
}
