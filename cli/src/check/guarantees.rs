//! One function per guarantee of the design (`shared/DESIGN.md`,
//! "Guarantees"). Each is a pure function of what was read; each fills the
//! lists of its own guarantee in the report.

use std::collections::{BTreeSet, HashMap, HashSet};

use seckill_schemas::{order_id_for, OrderView};

use super::evidence::{DeadLetter, DecisionRecord, Evidence, OrderLog, Snapshot};
use super::report::CampaignReport;

/// Everything the checks of one campaign look at.
pub struct Facts<'a> {
    pub snapshot: &'a Snapshot,
    pub per_user_limit: u32,
    /// Every announced decision of the campaign's requests (log and
    /// outside), by request id.
    pub announced: HashMap<&'a str, Vec<&'a DecisionRecord>>,
    pub log: Option<&'a OrderLog>,
    pub sent: &'a [String],
}

impl<'a> Facts<'a> {
    pub fn new(snapshot: &'a Snapshot, per_user_limit: u32, evidence: &Evidence<'a>) -> Self {
        let cid = snapshot.campaign_id.as_str();
        let mut announced: HashMap<&str, Vec<&DecisionRecord>> = HashMap::new();
        if let Some(log) = evidence.log {
            for d in log.campaign_decisions(cid) {
                announced.entry(d.request_id.as_str()).or_default().push(d);
            }
        }
        // Outside decisions of requests sent to this campaign count too, so
        // one decided for another campaign is caught as a conflict.
        let sent: HashSet<&str> = evidence.sent.iter().map(String::as_str).collect();
        for d in evidence
            .decisions
            .iter()
            .filter(|d| d.campaign_id == cid || sent.contains(d.request_id.as_str()))
        {
            announced.entry(d.request_id.as_str()).or_default().push(d);
        }
        Self {
            snapshot,
            per_user_limit,
            announced,
            log: evidence.log,
            sent: evidence.sent,
        }
    }

    /// The first decision of each request.
    fn firsts(&self) -> impl Iterator<Item = &'a DecisionRecord> + '_ {
        self.announced.values().map(|ds| ds[0])
    }

    /// Store orders that hold stock (reserved or paid).
    fn live(&self) -> impl Iterator<Item = &'a OrderView> + 'a {
        self.snapshot
            .orders
            .iter()
            .filter(|o| o.status.holds_stock())
    }

    fn live_units(&self) -> i64 {
        self.live().map(|o| i64::from(o.quantity)).sum()
    }

    /// Units of the decisions that made an order.
    fn ordered_units(&self) -> i64 {
        self.firsts()
            .filter(|d| d.made_order())
            .map(|d| i64::from(d.quantity))
            .sum()
    }
}

/// Runs guarantees 1-4 for one campaign.
pub fn check(snapshot: &Snapshot, per_user_limit: u32, evidence: &Evidence<'_>) -> CampaignReport {
    let facts = Facts::new(snapshot, per_user_limit, evidence);
    let mut r = CampaignReport {
        campaign_id: snapshot.campaign_id.clone(),
        counters: snapshot.counters,
        stored_orders: snapshot.orders.len(),
        reserved_units: facts.ordered_units(),
        ..CampaignReport::default()
    };
    for d in facts.firsts() {
        *r.by_status.entry(d.status.as_str()).or_default() += 1;
    }
    no_oversell(&facts, &mut r);
    conservation(&facts, &mut r);
    no_duplicate(&facts, &mut r);
    nothing_lost(&facts, &mut r);
    buckets(&facts, &mut r);
    r
}

/// Guarantees 1-3 for a campaign with stock buckets, bucket by bucket: no
/// bucket oversold, each conserved, every user's holding in the bucket
/// its id routes to (so the per-user limit, checked on the sum, is the
/// limit of one bucket's records); and, with the order log, units lent
/// between buckets all received (nothing in transit once settled) and the
/// buckets' totals adding up to the stock the log says was added.
pub fn buckets(f: &Facts<'_>, r: &mut CampaignReport) {
    let all = &f.snapshot.buckets;
    if all.is_empty() {
        return;
    }
    let count = u32::try_from(all.len()).unwrap_or(u32::MAX);
    for (b, bucket) in all.iter().enumerate() {
        let c = bucket.counters;
        if c.available < 0 || c.reserved < 0 || c.paid < 0 || c.reserved + c.paid > c.total {
            r.oversold.push(format!(
                "bucket {b}: total={} available={} reserved={} paid={}",
                c.total, c.available, c.reserved, c.paid
            ));
        }
        if !c.conserved() {
            r.counters_mismatch.push(format!(
                "bucket {b}: available {} + reserved {} + paid {} != total {}",
                c.available, c.reserved, c.paid, c.total
            ));
        }
        for u in bucket.users.keys() {
            let own = seckill_schemas::bucket_of(u, count);
            if own as usize != b {
                r.users_over_limit.push(format!(
                    "{u} holds units in bucket {b}, but its purchases belong to bucket {own}"
                ));
            }
        }
    }
    let Some(log) = f.log else {
        return;
    };
    let cid = f.snapshot.campaign_id.as_str();
    let get = |m: &HashMap<String, i64>| m.get(cid).copied().unwrap_or(0);
    let (lent, received) = (get(&log.lent), get(&log.received));
    if lent != received {
        r.counters_mismatch.push(format!(
            "buckets lent {lent} units and received {received}: {} in transit",
            lent - received
        ));
    }
    let added = get(&log.stock_added);
    if added != f.snapshot.counters.total {
        r.counters_mismatch.push(format!(
            "the log adds {added} units, the buckets' totals add up to {}",
            f.snapshot.counters.total
        ));
    }
}

/// Guarantee 1, no oversell: per campaign, reserved + paid never exceeds the stock
/// ever added - by Redis' counters, by the store's live orders, and (with
/// the order log) by the decisions net of the units returned.
pub fn no_oversell(f: &Facts<'_>, r: &mut CampaignReport) {
    let c = f.snapshot.counters;
    if c.available < 0 || c.reserved < 0 || c.paid < 0 {
        r.oversold.push(format!(
            "negative counter: available={} reserved={} paid={}",
            c.available, c.reserved, c.paid
        ));
    }
    if c.reserved + c.paid > c.total {
        r.oversold.push(format!(
            "redis reserved {} + paid {} > total {}",
            c.reserved, c.paid, c.total
        ));
    }
    let live = f.live_units();
    if live > c.total {
        r.oversold.push(format!(
            "{live} live units in the store > total {}",
            c.total
        ));
    }
    if let Some(log) = f.log {
        let out = f.ordered_units() - log.returned_units(&f.snapshot.campaign_id) as i64;
        if out > c.total {
            r.oversold.push(format!(
                "decisions hand out {out} units net of returns > total {}",
                c.total
            ));
        }
    }
}

/// Guarantee 2, stock conservation: stock added = available + reserved + paid, the
/// counters agree with the store's live orders (per campaign and per user)
/// once in-flight events settle, and cancel and expiry return an order's
/// units once.
pub fn conservation(f: &Facts<'_>, r: &mut CampaignReport) {
    let c = f.snapshot.counters;
    if !c.conserved() {
        r.counters_mismatch.push(format!(
            "available {} + reserved {} + paid {} != total {}",
            c.available, c.reserved, c.paid, c.total
        ));
    }
    let live = f.live_units();
    if live != c.reserved + c.paid {
        r.counters_mismatch.push(format!(
            "{live} live units in the store, redis reserved + paid = {}",
            c.reserved + c.paid
        ));
    }
    let users_sum: i64 = f.snapshot.users.values().sum();
    if users_sum != c.reserved + c.paid {
        r.counters_mismatch.push(format!(
            "users hash sums to {users_sum}, redis reserved + paid = {}",
            c.reserved + c.paid
        ));
    }
    let mut per_user: HashMap<&str, i64> = HashMap::new();
    for o in f.live() {
        *per_user.entry(o.user_id.as_str()).or_default() += i64::from(o.quantity);
    }
    let users: BTreeSet<&str> = per_user
        .keys()
        .copied()
        .chain(f.snapshot.users.keys().map(String::as_str))
        .collect();
    for u in users {
        let in_store = per_user.get(u).copied().unwrap_or(0);
        let in_redis = f.snapshot.users.get(u).copied().unwrap_or(0);
        if in_store != in_redis {
            r.counters_mismatch.push(format!(
                "{u}: {in_store} live units in the store, redis says {in_redis}"
            ));
        }
    }
    if let Some(log) = f.log {
        let out = f.ordered_units() - log.returned_units(&f.snapshot.campaign_id) as i64;
        if out != c.reserved + c.paid {
            r.counters_mismatch.push(format!(
                "decisions hand out {out} units net of returns, redis reserved + paid = {}",
                c.reserved + c.paid
            ));
        }
        for (order_id, by) in &log.returns {
            let ours = log
                .order_status
                .get(order_id)
                .is_some_and(|(cid, _)| *cid == f.snapshot.campaign_id);
            if ours && by.len() > 1 {
                r.double_returned_stock
                    .push(format!("order {order_id} returned by {by:?}"));
            }
        }
    }
}

/// Guarantee 3, no duplicate: a request id yields one decision however often it is
/// delivered, one order at most, with the id derived from it; a user never
/// holds more than the per-user limit.
pub fn no_duplicate(f: &Facts<'_>, r: &mut CampaignReport) {
    let cid = f.snapshot.campaign_id.as_str();
    for (id, ds) in &f.announced {
        if let Some(other) = ds.iter().find(|d| **d != ds[0]) {
            r.conflicting_decisions
                .push(format!("{id}: {:?} vs {:?}", ds[0], other));
        }
        if ds[0].campaign_id != cid {
            r.conflicting_decisions.push(format!(
                "{id}: sent to {cid}, decided for {}",
                ds[0].campaign_id
            ));
        }
        let d = ds[0];
        if d.made_order() && d.order_id.as_deref() != Some(order_id_for(&d.request_id).as_str()) {
            r.duplicate_orders.push(format!(
                "request {} made order {:?}, expected {}",
                d.request_id,
                d.order_id,
                order_id_for(&d.request_id)
            ));
        }
    }
    let mut by_request: HashMap<&str, usize> = HashMap::new();
    let mut by_order: HashMap<&str, usize> = HashMap::new();
    for o in &f.snapshot.orders {
        *by_request.entry(o.request_id.as_str()).or_default() += 1;
        *by_order.entry(o.order_id.as_str()).or_default() += 1;
        if o.order_id != order_id_for(&o.request_id) {
            r.duplicate_orders.push(format!(
                "store order {} is not derived from its request {}",
                o.order_id, o.request_id
            ));
        }
    }
    for (id, n) in by_request.into_iter().chain(by_order) {
        if n > 1 {
            r.duplicate_orders
                .push(format!("{id} has {n} orders in the store"));
        }
    }
    let limit = i64::from(f.per_user_limit);
    let mut per_user: HashMap<&str, i64> = HashMap::new();
    for o in f.live() {
        *per_user.entry(o.user_id.as_str()).or_default() += i64::from(o.quantity);
    }
    for (u, n) in &per_user {
        if *n > limit {
            r.users_over_limit
                .push(format!("{u} holds {n} units in the store (limit {limit})"));
        }
    }
    for (u, n) in &f.snapshot.users {
        if *n > limit {
            r.users_over_limit
                .push(format!("{u} holds {n} units in redis (limit {limit})"));
        }
    }
}

/// Guarantee 4, nothing lost: every request sent ends with a decision; every order a
/// decision made ends in the store, and (with the order log) the store
/// holds no order nobody decided and none behind its announced status.
pub fn nothing_lost(f: &Facts<'_>, r: &mut CampaignReport) {
    for id in f.sent {
        if !f.announced.contains_key(id.as_str()) {
            r.undecided_requests.push(id.clone());
        }
    }
    r.undecided_requests.sort();
    let stored: HashMap<&str, &OrderView> = f
        .snapshot
        .orders
        .iter()
        .map(|o| (o.order_id.as_str(), o))
        .collect();
    let mut ordered: HashSet<&str> = HashSet::new();
    for d in f.firsts().filter(|d| d.made_order()) {
        let Some(id) = d.order_id.as_deref() else {
            continue;
        };
        ordered.insert(id);
        if !stored.contains_key(id) {
            r.orders_missing_from_store
                .push(format!("order {id} of request {}", d.request_id));
        }
    }
    let Some(log) = f.log else {
        return;
    };
    for o in &f.snapshot.orders {
        let decision = f
            .announced
            .get(o.request_id.as_str())
            .map(|ds| ds[0])
            .filter(|d| d.made_order());
        match decision {
            None => r.unexplained_orders.push(format!(
                "order {} of request {} has no decision that made it",
                o.order_id, o.request_id
            )),
            Some(d) if d.user_id != o.user_id || d.quantity != o.quantity => {
                r.unexplained_orders.push(format!(
                    "order {} ({} x{}) differs from its decision ({} x{})",
                    o.order_id, o.user_id, o.quantity, d.user_id, d.quantity
                ))
            }
            Some(_) => {}
        }
    }
    for (order_id, (cid, status)) in &log.order_status {
        if *cid != f.snapshot.campaign_id {
            continue;
        }
        let behind = match stored.get(order_id.as_str()) {
            Some(o) => o.status.rank() < status.rank(),
            // Counted as missing when a decision announced it.
            None => !ordered.contains(order_id.as_str()),
        };
        if behind {
            r.stale_orders.push(format!(
                "order {order_id} is {status} in the log, {} in the store",
                stored
                    .get(order_id.as_str())
                    .map_or("absent", |o| o.status.as_str())
            ));
        }
    }
}

/// Guarantee 5, crash safety: after roles were killed with SIGKILL and restarted,
/// guarantees 1-4 still hold for every campaign. Returns what broke, per
/// campaign (empty when nothing did).
pub fn crash_safety(after_restart: &[CampaignReport]) -> Vec<String> {
    after_restart
        .iter()
        .filter(|r| !r.is_clean())
        .map(|r| format!("after the restarts: {r}"))
        .collect()
}

/// Guarantee 6, bad input: every message in `sent_bad` (payloads that cannot be
/// decided or stored) sits on the dead-letter topic with an error class, a
/// reason and its source topic, and nothing on the dead-letter topic lacks
/// them. Returns what is wrong (empty when nothing is).
pub fn bad_input(dead: &[DeadLetter], sent_bad: &[&[u8]], source_topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    for payload in sent_bad {
        if !dead.iter().any(|d| d.payload == *payload) {
            out.push(format!(
                "{:?} is not on the dead-letter topic",
                String::from_utf8_lossy(payload)
            ));
        }
    }
    for d in dead {
        let said = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if !said(&d.error_class) || !said(&d.error) {
            out.push(format!(
                "dead letter {:?} does not say why (class {:?}, error {:?})",
                String::from_utf8_lossy(&d.payload),
                d.error_class,
                d.error
            ));
        }
        if d.original_topic.as_deref() != Some(source_topic) {
            out.push(format!(
                "dead letter {:?} names source topic {:?}, expected {source_topic:?}",
                String::from_utf8_lossy(&d.payload),
                d.original_topic
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use seckill_schemas::state::StockCounters;
    use seckill_schemas::{AwardType, DecisionStatus, OrderStatus};

    fn order(request: &str, user: &str, q: u32, status: OrderStatus) -> OrderView {
        OrderView {
            order_id: order_id_for(request),
            request_id: request.into(),
            campaign_id: "c".into(),
            user_id: user.into(),
            quantity: q,
            price: 1,
            status,
            created_at_ms: 0,
            updated_at_ms: 0,
            expires_at_ms: 0,
            prize_id: None,
            item_name: String::new(),
            award_type: AwardType::default(),
            payment_ref: None,
        }
    }

    fn reserved(request: &str, user: &str, q: u32) -> DecisionRecord {
        DecisionRecord {
            request_id: request.into(),
            campaign_id: "c".into(),
            user_id: user.into(),
            status: DecisionStatus::Reserved,
            order_id: Some(order_id_for(request)),
            quantity: q,
        }
    }

    /// Two units of five sold, to two users, everything consistent.
    fn healthy() -> (Snapshot, Vec<DecisionRecord>) {
        let snapshot = Snapshot {
            campaign_id: "c".into(),
            counters: StockCounters {
                total: 5,
                available: 3,
                reserved: 1,
                paid: 1,
            },
            users: [("a".to_owned(), 1), ("b".to_owned(), 1)].into(),
            orders: vec![
                order("r1", "a", 1, OrderStatus::Reserved),
                order("r2", "b", 1, OrderStatus::Paid),
            ],
            buckets: Vec::new(),
        };
        (
            snapshot,
            vec![reserved("r1", "a", 1), reserved("r2", "b", 1)],
        )
    }

    fn run(s: &Snapshot, ds: &[DecisionRecord], sent: &[String], limit: u32) -> CampaignReport {
        let refs: Vec<&DecisionRecord> = ds.iter().collect();
        check(
            s,
            limit,
            &Evidence {
                decisions: &refs,
                log: None,
                sent,
            },
        )
    }

    #[test]
    fn a_consistent_campaign_is_clean() {
        let (s, ds) = healthy();
        let r = run(&s, &ds, &["r1".into(), "r2".into()], 1);
        assert!(r.is_clean(), "{r}");
    }

    #[test]
    fn each_guarantee_catches_its_own_violation() {
        // 1: Redis sold a sixth unit of five.
        let (mut s, ds) = healthy();
        s.counters.available = -1;
        s.counters.reserved = 5;
        let r = run(&s, &ds, &[], 1);
        assert!(!r.oversold.is_empty(), "{r}");
        // 2: a unit vanished from the counters.
        let (mut s, ds) = healthy();
        s.counters.available = 2;
        let r = run(&s, &ds, &[], 1);
        assert!(
            !r.counters_mismatch.is_empty() && r.oversold.is_empty(),
            "{r}"
        );
        // 3: a second order for request r1, and a user over the limit.
        let (mut s, mut ds) = healthy();
        let mut twin = order("r1", "a", 1, OrderStatus::Reserved);
        twin.order_id = "other".into();
        s.orders.push(twin);
        ds.push(DecisionRecord {
            status: DecisionStatus::SoldOut,
            order_id: None,
            ..reserved("r2", "b", 1)
        });
        let r = run(&s, &ds, &[], 1);
        assert!(!r.duplicate_orders.is_empty(), "{r}");
        assert!(!r.users_over_limit.is_empty(), "{r}");
        assert!(!r.conflicting_decisions.is_empty(), "{r}");
        // 4: a sent request with no decision, a reservation not stored.
        let (mut s, ds) = healthy();
        s.orders.remove(0);
        let r = run(&s, &ds, &["r1".into(), "r3".into()], 1);
        assert_eq!(r.undecided_requests, vec!["r3".to_owned()], "{r}");
        assert_eq!(r.orders_missing_from_store.len(), 1, "{r}");
        // 5: any of them after a restart is a crash-safety failure.
        assert_eq!(crash_safety(&[r.clone()]).len(), 1);
        assert!(crash_safety(&[run(&healthy().0, &healthy().1, &[], 1)]).is_empty());
    }

    #[test]
    fn with_the_order_log_returns_and_statuses_are_checked() {
        let (s, ds) = healthy();
        let returned = |rid: &str, by: &str| {
            serde_json::json!({"type": "cancelled", "schema_version": 1, "request_id": by,
                "order_id": order_id_for(rid), "purchase_request_id": rid, "campaign_id": "c",
                "user_id": "a", "quantity": 1, "price": 1, "created_at_ms": 0,
                "expires_at_ms": 0, "decided_at_ms": 1})
            .to_string()
        };
        // r1 cancelled twice by two different commands; the store still
        // shows it reserved and Redis still counts it.
        let (one, two) = (returned("r1", "cancel-1"), returned("r1", "cancel-2"));
        let log = OrderLog::from_payloads([one.as_bytes(), two.as_bytes()]);
        assert_eq!(log.unparsed, 0);
        let refs: Vec<&DecisionRecord> = ds.iter().collect();
        let r = check(
            &s,
            1,
            &Evidence {
                decisions: &refs,
                log: Some(&log),
                sent: &[],
            },
        );
        assert_eq!(r.double_returned_stock.len(), 1, "{r}");
        assert_eq!(r.stale_orders.len(), 1, "{r}");
        assert!(!r.counters_mismatch.is_empty(), "{r}");
    }

    /// A campaign of two buckets: a user in the wrong bucket, a bucket
    /// that is not conserved, and units lent but never received are each
    /// caught; the healthy split is clean.
    #[test]
    fn stock_buckets_are_checked_one_by_one_and_against_the_log() {
        use super::super::evidence::BucketSnapshot;
        let (mut s, ds) = healthy();
        let (a, b) = (
            seckill_schemas::bucket_of("a", 2),
            seckill_schemas::bucket_of("b", 2),
        );
        let mut buckets = vec![BucketSnapshot::default(), BucketSnapshot::default()];
        // total 5 = bucket 0: 3 (a's unit reserved there if a routes to 0).
        for (user, bucket, reserved, paid) in [("a", a, 1, 0), ("b", b, 0, 1)] {
            let c = &mut buckets[bucket as usize].counters;
            c.reserved += reserved;
            c.paid += paid;
            c.total += reserved + paid;
            buckets[bucket as usize].users.insert(user.to_owned(), 1);
        }
        buckets[0].counters.total += 3;
        buckets[0].counters.available += 3;
        s.buckets = buckets;
        let created = |units: u64| {
            serde_json::json!({"type": "campaign_applied", "schema_version": 1,
                "request_id": format!("create-{units}"), "campaign_id": "c",
                "outcome": "created", "action": "create", "decided_at_ms": 1,
                "quantity": units})
            .to_string()
        };
        let moved = |action: &str, units: u64| {
            serde_json::json!({"type": "campaign_applied", "schema_version": 1,
                "request_id": format!("{action}-{units}"), "campaign_id": "c",
                "outcome": "applied", "action": action, "decided_at_ms": 1,
                "quantity": units})
            .to_string()
        };
        let refs: Vec<&DecisionRecord> = ds.iter().collect();
        let with_log = |s: &Snapshot, log: &OrderLog| {
            let mut r = check(
                s,
                1,
                &Evidence {
                    decisions: &refs,
                    log: Some(log),
                    sent: &[],
                },
            );
            // These tests look at the buckets only.
            r.counters_mismatch
                .retain(|m| m.contains("bucket") || m.contains("log"));
            r
        };
        // The transfer announced twice (its batch redelivered) counts once.
        let settled = [
            created(3),
            created(2),
            moved("borrow", 1),
            moved("transfer", 1),
            moved("transfer", 1),
        ];
        let log = OrderLog::from_payloads(settled.iter().map(|p| p.as_bytes()));
        assert!(with_log(&s, &log).is_clean(), "{}", with_log(&s, &log));
        // A unit lent, not received yet.
        let in_transit = [created(3), created(2), moved("borrow", 1)];
        let log2 = OrderLog::from_payloads(in_transit.iter().map(|p| p.as_bytes()));
        let r = with_log(&s, &log2);
        assert!(
            r.counters_mismatch.iter().any(|m| m.contains("in transit")),
            "{r}"
        );
        // A bucket that lost a unit.
        let mut lossy = s.clone();
        lossy.buckets[0].counters.available -= 1;
        assert!(!with_log(&lossy, &log).counters_mismatch.is_empty());
        // A user holding units in a bucket it does not route to.
        let mut stray = s.clone();
        let other = 1 - a as usize;
        stray.buckets[other].users.insert("a".to_owned(), 1);
        stray.buckets[a as usize].users.remove("a");
        let r = with_log(&stray, &log);
        assert!(
            r.users_over_limit
                .iter()
                .any(|m| m.contains("belong to bucket")),
            "{r}"
        );
    }

    #[test]
    fn bad_input_needs_every_poison_message_in_the_dlq_with_its_reason() {
        let ok = DeadLetter {
            payload: b"{oops".to_vec(),
            error_class: Some("unparseable".into()),
            error: Some("invalid JSON".into()),
            original_topic: Some("t.requests".into()),
        };
        assert!(bad_input(&[ok.clone()], &[b"{oops"], "t.requests").is_empty());
        assert_eq!(
            bad_input(&[ok.clone()], &[b"{oops", b"lost"], "t.requests").len(),
            1
        );
        let silent = DeadLetter {
            error: None,
            ..ok.clone()
        };
        assert_eq!(bad_input(&[silent], &[b"{oops"], "t.requests").len(), 1);
        assert_eq!(bad_input(&[ok], &[b"{oops"], "t.orders").len(), 1);
    }
}
