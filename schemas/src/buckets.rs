//! Stock buckets: a hot campaign's stock split across `B` buckets, each
//! with its own Redis keys and its own Kafka key, so that `B` partitions
//! (and `B` processors) decide one campaign at once.
//!
//! The contract, for every producer:
//! - bucket 0 is the campaign itself: Redis keys tagged `{c:<id>}` and
//!   Kafka key `<id>`, exactly as a campaign without buckets; bucket `b`
//!   (1 <= b < B) has keys tagged `{c:<id>#<b>}` and Kafka key `<id>#<b>`
//!   ([`bucket_key`]). A campaign with `B = 1` is therefore unchanged.
//! - a purchase of user `u` belongs to bucket [`bucket_of`]`(u, B)`:
//!   FNV-1a (32-bit) over the user id's UTF-8 bytes, modulo `B`. A user
//!   always lands in the same bucket, so that bucket's holdings are the
//!   whole truth for the per-user limit. A purchase produced under another
//!   key of the campaign (the bare id, say) is forwarded by the processors
//!   to its bucket's key before anything is decided.
//! - `B` is fixed when the campaign is created and shown as `buckets` in
//!   the campaign view and its definition.

/// The most buckets a campaign may have.
pub const MAX_BUCKETS: u32 = 64;

/// The separator between a campaign id and its bucket in a key; campaign
/// ids never contain it (see `validate_campaign_id`).
pub const BUCKET_SEPARATOR: char = '#';

/// The Kafka key (and the Redis key tag, after `c:`) of bucket `bucket` of
/// `campaign_id`: the id itself for bucket 0, `<id>#<bucket>` otherwise.
pub fn bucket_key(campaign_id: &str, bucket: u32) -> String {
    if bucket == 0 {
        campaign_id.to_owned()
    } else {
        format!("{campaign_id}{BUCKET_SEPARATOR}{bucket}")
    }
}

/// Reads a key written by [`bucket_key`]: the campaign id and the bucket,
/// or `None` when the bucket part is not a bucket number (1 to
/// [`MAX_BUCKETS`] - 1, in decimal without leading zeros).
pub fn split_key(key: &str) -> Option<(&str, u32)> {
    match key.split_once(BUCKET_SEPARATOR) {
        None => Some((key, 0)),
        Some((id, b)) => {
            let n: u32 = b.parse().ok()?;
            ((1..MAX_BUCKETS).contains(&n) && n.to_string() == b).then_some((id, n))
        }
    }
}

/// FNV-1a, 32-bit: offset basis 2166136261, prime 16777619.
fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The bucket of `user_id`'s purchases in a campaign of `buckets` buckets
/// (0 when `buckets` <= 1): FNV-1a 32-bit of the user id, modulo `buckets`.
pub fn bucket_of(user_id: &str, buckets: u32) -> u32 {
    if buckets <= 1 {
        return 0;
    }
    fnv1a(user_id.as_bytes()) % buckets
}

/// `units` split over `buckets` buckets: the same share each, the
/// remainder one unit each to the first buckets.
pub fn shares(units: u64, buckets: u32) -> Vec<u64> {
    let n = u64::from(buckets.max(1));
    (0..n)
        .map(|b| units / n + u64::from(b < units % n))
        .collect()
}

/// What the automatic choice of a campaign's buckets weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketPlan {
    /// Units the campaign starts with.
    pub stock: u64,
    /// Purchases per second the campaign expects at its peak (none: one
    /// bucket).
    pub expected_requests_per_sec: Option<u64>,
    /// Decisions per second one bucket's partition takes on this hardware.
    pub rate_per_bucket: u64,
    /// Partitions of the requests topic: more buckets than partitions add
    /// nothing.
    pub partitions: u32,
    /// Fewest units a bucket starts with: a small campaign stays in one
    /// bucket (borrowing between buckets costs round trips).
    pub min_units_per_bucket: u64,
}

impl BucketPlan {
    /// `ceil(expected / rate_per_bucket)`, clamped to 1 ..=
    /// `min(partitions, stock / min_units_per_bucket, MAX_BUCKETS)`.
    pub fn buckets(&self) -> u32 {
        let Some(expected) = self.expected_requests_per_sec else {
            return 1;
        };
        let wanted = expected.div_ceil(self.rate_per_bucket.max(1));
        let by_stock = self.stock / self.min_units_per_bucket.max(1);
        let cap = u64::from(self.partitions.min(MAX_BUCKETS))
            .min(by_stock)
            .max(1);
        // Clamped to cap <= MAX_BUCKETS, so it fits.
        u32::try_from(wanted.clamp(1, cap)).unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bucket_zero_is_the_campaign_itself() {
        assert_eq!(bucket_key("sale-1", 0), "sale-1");
        assert_eq!(bucket_key("sale-1", 3), "sale-1#3");
        assert_eq!(split_key("sale-1"), Some(("sale-1", 0)));
        assert_eq!(split_key("sale-1#3"), Some(("sale-1", 3)));
        for bad in ["c#0", "c#03", "c#64", "c#x", "c#", "c#-1", "c#1#2"] {
            assert_eq!(split_key(bad), None, "{bad}");
        }
    }

    /// The published test vectors: an upstream producer computing the
    /// bucket in another language must get these.
    #[test]
    fn the_routing_hash_is_fnv1a_32() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
        assert_eq!(bucket_of("foobar", 4), 0xbf9c_f968 % 4);
        assert_eq!(bucket_of("anyone", 1), 0);
        assert_eq!(bucket_of("anyone", 0), 0);
        // Spread: 4,000 users over 4 buckets, each gets a fair share.
        let mut n = [0u32; 4];
        for i in 0..4000 {
            n[bucket_of(&format!("user-{i}"), 4) as usize] += 1;
        }
        assert!(n.iter().all(|c| (850..1150).contains(c)), "{n:?}");
    }

    #[test]
    fn shares_add_up_with_the_remainder_first() {
        assert_eq!(shares(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(shares(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(shares(7, 1), vec![7]);
        assert_eq!(shares(9, 0), vec![9]);
    }

    #[test]
    fn automatic_buckets_follow_rate_and_stay_within_partitions_and_stock() {
        let plan = BucketPlan {
            stock: 100_000,
            expected_requests_per_sec: Some(100_000),
            rate_per_bucket: 30_000,
            partitions: 8,
            min_units_per_bucket: 100,
        };
        assert_eq!(plan.buckets(), 4);
        assert_eq!(
            BucketPlan {
                partitions: 3,
                ..plan
            }
            .buckets(),
            3
        );
        assert_eq!(BucketPlan { stock: 250, ..plan }.buckets(), 2);
        assert_eq!(BucketPlan { stock: 50, ..plan }.buckets(), 1);
        assert_eq!(
            BucketPlan {
                expected_requests_per_sec: None,
                ..plan
            }
            .buckets(),
            1
        );
        assert_eq!(
            BucketPlan {
                expected_requests_per_sec: Some(10),
                ..plan
            }
            .buckets(),
            1
        );
        assert_eq!(
            BucketPlan {
                partitions: 1000,
                stock: u64::MAX,
                expected_requests_per_sec: Some(u64::MAX),
                rate_per_bucket: 1,
                ..plan
            }
            .buckets(),
            MAX_BUCKETS
        );
    }
}
