//! A campaign's Redis state, in one place: the key names ([`keys`]), the
//! field names of its hashes, the operation names the decision script
//! takes, and one codec per record kind it stores or answers.
//!
//! `processors/src/decide.lua` is the only writer of these records; the
//! processors, `seckill reconcile`, the ingest cache and the invariant
//! checker read them through this module, and restore writes them through
//! it. A round-trip test in `processors/tests/decide.rs` decodes what the
//! script wrote and fails when the two drift.

mod keys;
mod line;
mod records;

pub use keys::{
    lookup_shard, position_windows, CampaignKeys, KeyLayout, LookupKind, LookupWindows,
    LOOKUP_SHARDS, POSITION_TTL_SECS,
};
pub use line::{Position, Progress};
pub use records::{Answer, OrderRecord, Payment, RecordError, StockCounters, StoredOrder};

/// Fields of the campaign's `meta` hash.
pub mod meta {
    /// The definition as canonical JSON (what a create compares against).
    pub const DEFINITION: &str = "def";
    /// `sale` or `lottery`.
    pub const KIND: &str = "kind";
    pub const PER_USER_LIMIT: &str = "limit";
    /// Window start and end, unix ms.
    pub const STARTS_AT: &str = "start";
    pub const ENDS_AT: &str = "end";
    pub const PAYMENT_TIMEOUT_SECS: &str = "timeout";
    pub const PRICE: &str = "price";
    /// `1` once closed, else `0`.
    pub const CLOSED: &str = "closed";
    /// `1` while a draft, else `0`.
    pub const DRAFT: &str = "draft";
    /// Lottery draws allowed per user (0: no limit).
    pub const MAX_ATTEMPTS: &str = "max_att";
    /// `fixed` or `renormalize`.
    pub const STRATEGY: &str = "strategy";
    /// The draw table as JSON `[{id, p, price, stock}]`.
    pub const DRAW_TABLE: &str = "table";
    /// When the create was applied (Redis time, unix ms).
    pub const CREATED_AT: &str = "created_at";
    /// A repair's fence (`seckill reconcile --repair`): its token, until
    /// when it holds (unix ms), and the token again once the campaign's
    /// processor has settled everything decided before it.
    pub const FENCE: &str = "fence";
    pub const FENCE_UNTIL: &str = "fence_until";
    pub const FENCE_READY: &str = "fence_ready";
    /// Stock buckets: how many the campaign has, and which one this is
    /// (only on a campaign with more than one).
    pub const BUCKETS: &str = "buckets";
    pub const BUCKET: &str = "bucket";

    /// How a flag is stored.
    pub fn flag(on: bool) -> &'static str {
        if on {
            "1"
        } else {
            "0"
        }
    }
}

/// Fields of the campaign's `stock` hash (units).
pub mod stock {
    pub const TOTAL: &str = "total";
    pub const AVAILABLE: &str = "available";
    pub const RESERVED: &str = "reserved";
    pub const PAID: &str = "paid";
    /// In the order [`super::StockCounters`] reads them.
    pub const ALL: [&str; 4] = [TOTAL, AVAILABLE, RESERVED, PAID];
}

/// Fields of the campaign's `prizes` hash.
pub mod prizes {
    /// Units of `prize_id` ever added (the units left are under the id
    /// itself).
    pub fn total(prize_id: &str) -> String {
        format!("{prize_id}:total")
    }
}

/// How long a retired campaign keeps its records.
pub mod retention {
    /// Seconds a campaign's per-request and per-order records (the
    /// `users`, `requests`, `orders`, `deadlines`, `attempts` and `stats`
    /// keys) outlive the campaign's close or the end of its window (7
    /// days); `meta`, `stock` and `prizes` stay.
    pub const DEFAULT_SECS: u64 = 604_800;
}

/// The operation names the decision script takes (field `t` of each
/// operation in its argument).
pub mod op {
    pub const PURCHASE: &str = "purchase";
    pub const CREATE: &str = "create";
    pub const ADD_STOCK: &str = "add_stock";
    pub const CLOSE: &str = "close";
    pub const PUBLISH: &str = "publish";
    pub const RESET: &str = "reset";
    pub const PAY: &str = "pay";
    pub const CANCEL: &str = "cancel";
    pub const EXPIRE: &str = "expire";
    pub const FENCE: &str = "fence";
    pub const BORROW: &str = "borrow";
    pub const TRANSFER: &str = "transfer";
}
