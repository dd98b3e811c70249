//! Redis key layout. Every key of a campaign carries the hash tag `{c:<id>}`
//! so that one Lua call touches one slot and runs unchanged on Redis Cluster.
//! The processors are the only writers of the campaign keys; ingest only
//! reads them. The one thing ingest writes is a pending request's
//! [`KeyLayout::position`], which no campaign state depends on.
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

    /// The hash that holds the lookup of `kind` for `id` written in time
    /// window `window` (see [`LookupWindows`]).
    ///
    /// A lookup makes something findable without its campaign: a request's
    /// result as API JSON (what `GET /v1/requests/{id}` has), or an order's
    /// campaign (so a pay or cancel by order id can be keyed). They are
    /// fields of a few hashes per time window, not one key each: written as
    /// one HSET per hash per batch, they cost Redis less than half of what
    /// a SETEX per decision did, and a window's hashes expire as a whole.
    /// The authoritative copy of a result stays in the campaign's
    /// `requests` hash.
    pub fn lookup(&self, kind: LookupKind, id: &str, window: u64) -> String {
        self.lookup_hash(kind, window, lookup_shard(id))
    }

    /// The lookup hash of `kind`, `window` and shard `shard` (see
    /// [`lookup_shard`]), for writers that group a batch by hash.
    pub fn lookup_hash(&self, kind: LookupKind, window: u64, shard: u32) -> String {
        format!("{}:lk:{}:{window}:{shard}", self.prefix, kind.tag())
    }

    /// The one key per lookup that processors wrote before the lookup
    /// hashes (`<prefix>:decision:<id>`, `<prefix>:order:<id>`): readers
    /// still look there, so that lookups written before an upgrade, or by
    /// processors not restarted yet in a rolling one, stay readable.
    pub fn legacy_lookup(&self, kind: LookupKind, id: &str) -> String {
        match kind {
            LookupKind::Result => format!("{}:decision:{id}", self.prefix),
            LookupKind::OrderCampaign => format!("{}:order:{id}", self.prefix),
        }
    }

    /// Where processors publish how long lookups are kept, so that readers
    /// compute the same windows ([`LookupWindows::secs`]).
    pub fn lookup_ttl(&self) -> String {
        format!("{}:lk:ttl_secs", self.prefix)
    }

    /// Set of every campaign id, for the expiry sweeper and system stats.
    pub fn campaigns(&self) -> String {
        format!("{}:campaigns", self.prefix)
    }

    /// The hash that holds where request `request_id`, recorded in time
    /// window `window`, sits on the requests topic and whose it is (see
    /// [`super::Position`]), for its place in line while it is pending.
    /// Written by ingest once the broker acknowledged the request, never
    /// read for a decision. Like lookups, positions are fields of a few
    /// hashes per window (one HSET per hash per write, instead of a SETEX
    /// per request), and a window's hashes expire as a whole.
    pub fn position(&self, request_id: &str, window: u64) -> String {
        self.position_hash(window, lookup_shard(request_id))
    }

    /// The position hash of `window` and shard `shard` (see
    /// [`lookup_shard`]), for a writer that groups its writes by hash.
    pub fn position_hash(&self, window: u64, shard: u32) -> String {
        format!("{}:pos:{window}:{shard}", self.prefix)
    }

    /// The one key per request ingest wrote positions under before the
    /// position hashes; still read, so that positions an older ingest
    /// wrote during a rolling upgrade keep answering.
    pub fn legacy_position(&self, request_id: &str) -> String {
        format!("{}:position:{request_id}", self.prefix)
    }

    /// Hash: partition of the requests topic -> how far the processors are
    /// on it (see [`super::Progress`]). Written by the processors once per
    /// batch, with the batch's lookups.
    pub fn progress(&self) -> String {
        format!("{}:progress", self.prefix)
    }
}

/// What a lookup finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LookupKind {
    /// request id -> the result as API JSON.
    Result,
    /// order id -> its campaign id.
    OrderCampaign,
}

impl LookupKind {
    fn tag(self) -> &'static str {
        match self {
            Self::Result => "r",
            Self::OrderCampaign => "o",
        }
    }
}

/// Hashes per lookup kind and window: spread over cluster slots, and no
/// single hash grows past a sixteenth of a window's lookups.
pub const LOOKUP_SHARDS: u32 = 16;

/// The shard of a lookup id (FNV-1a: stable across processes and builds).
pub fn lookup_shard(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % LOOKUP_SHARDS
}

/// How long a pending request's position ([`KeyLayout::position`]) stays
/// readable, at least (at most twice that: see [`LookupWindows`]). A
/// position matters only while its request is pending; an hour outlasts
/// any healthy wait by far, and keeps positions for an hour or two instead
/// of for the decisions' day. After it the request still answers,
/// `pending` without a place.
pub const POSITION_TTL_SECS: u64 = 3600;

/// The windows positions are written into and read from.
pub fn position_windows() -> LookupWindows {
    LookupWindows::new(POSITION_TTL_SECS)
}

/// Lookups are written into the window of the writer's clock, whose
/// length is the lookups' time to live; a window's hashes expire one whole
/// window after it ends, so a lookup stays readable at least `secs` and at
/// most twice that. A reader checks the window of its own clock and both
/// neighbours, so clocks that differ by less than a window still agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupWindows {
    /// Window length = the lookups' time to live, seconds (at least 60).
    pub secs: u64,
}

impl LookupWindows {
    pub fn new(ttl_secs: u64) -> Self {
        Self {
            secs: ttl_secs.max(60),
        }
    }

    /// Unix seconds by this process's clock, the time the windows count.
    pub fn now_secs() -> u64 {
        u64::try_from(crate::now_ms() / 1000).unwrap_or(0)
    }

    /// The window a lookup written at `now_secs` goes into.
    pub fn current(&self, now_secs: u64) -> u64 {
        now_secs / self.secs
    }

    /// When the hashes of `window` expire (unix seconds).
    pub fn expires_at(&self, window: u64) -> u64 {
        (window + 2) * self.secs
    }

    /// The windows to read at `now_secs`, newest first.
    pub fn to_read(&self, now_secs: u64) -> [u64; 3] {
        let w = self.current(now_secs);
        [w + 1, w, w.saturating_sub(1)]
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

    /// A lookup written at any moment of its window is still read one TTL
    /// later, by a reader whose clock is up to a window off, and gone two
    /// windows after its own.
    #[test]
    fn lookups_stay_readable_for_their_ttl() {
        let w = LookupWindows::new(3600);
        for written in [7200, 7201, 9000, 10_799] {
            let window = w.current(written);
            for read in [
                written,
                written + 3600,
                written.saturating_sub(3599),
                written + 3599,
            ] {
                assert!(
                    w.to_read(read).contains(&window),
                    "{written} read at {read}"
                );
            }
            assert!(w.expires_at(window) >= written + 3600);
            assert!(w.expires_at(window) <= written + 2 * 3600);
        }
        assert_eq!(LookupWindows::new(1).secs, 60);
    }

    #[test]
    fn lookup_keys_spread_over_shards() {
        let layout = KeyLayout::new("p");
        let key = layout.lookup(LookupKind::Result, "req-1", 5);
        assert!(key.starts_with("p:lk:r:5:"), "{key}");
        let shards: std::collections::HashSet<u32> = (0..1000)
            .map(|i| lookup_shard(&format!("req-{i}")))
            .collect();
        assert_eq!(shards.len() as u32, LOOKUP_SHARDS);
        assert_eq!(lookup_shard("req-1"), lookup_shard("req-1"));
    }
}
