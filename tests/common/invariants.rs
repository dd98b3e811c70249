//! The invariant checker: for one campaign, reads the order store (HTTP),
//! the Redis counters and the decisions (orders topic + HTTP answers) and
//! says what, if anything, is wrong.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use seckill_schemas::{order_id_for, Decision, DecisionStatus, OrderView};

use super::{Api, DecisionLog, Stack};

/// What the checker found for one campaign. Every `Vec` lists violations;
/// a clean report has them all empty.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) campaign_id: String,
    // Redis stock hash.
    pub(crate) total: i64,
    pub(crate) available: i64,
    pub(crate) reserved: i64,
    pub(crate) paid: i64,
    pub(crate) per_user_limit: u32,
    /// Requests the test sent (or at least those it knows of).
    pub(crate) requests: usize,
    /// Requests whose decision is `reserved`, and their units.
    pub(crate) reserved_requests: usize,
    pub(crate) reserved_units: i64,
    /// Decisions by status (one per request).
    pub(crate) by_status: BTreeMap<String, usize>,
    pub(crate) store_orders: usize,

    /// Reserved + paid beyond the stock ever added, or a negative counter.
    pub(crate) oversold: Vec<String>,
    /// available + reserved + paid != total, or Redis counters that disagree
    /// with the decisions.
    pub(crate) counters: Vec<String>,
    /// The same order twice in the store, two orders for one request, or an
    /// order id not derived from its request id.
    pub(crate) duplicate_orders: Vec<String>,
    /// One request with different decisions.
    pub(crate) conflicting_decisions: Vec<String>,
    /// Users holding more than per_user_limit.
    pub(crate) users_over_limit: Vec<String>,
    /// Requests sent without a decision.
    pub(crate) undecided_requests: Vec<String>,
    /// Reserved decisions whose order is not in the store.
    pub(crate) orders_missing_from_store: Vec<String>,
    /// Store orders no reserved decision accounts for, or that differ from
    /// their decision.
    pub(crate) unexplained_orders: Vec<String>,
}

impl Report {
    pub(crate) fn is_clean(&self) -> bool {
        self.violations().is_empty()
    }

    /// Every violation as "kind: detail" (at most 10 per kind).
    pub(crate) fn violations(&self) -> Vec<String> {
        let kinds: [(&str, &Vec<String>); 8] = [
            ("oversold", &self.oversold),
            ("counters", &self.counters),
            ("duplicate order", &self.duplicate_orders),
            ("conflicting decisions", &self.conflicting_decisions),
            ("user over limit", &self.users_over_limit),
            ("undecided request", &self.undecided_requests),
            ("order missing from store", &self.orders_missing_from_store),
            ("unexplained order", &self.unexplained_orders),
        ];
        let mut out = Vec::new();
        for (kind, list) in kinds {
            for v in list.iter().take(10) {
                out.push(format!("{kind}: {v}"));
            }
            if list.len() > 10 {
                out.push(format!("{kind}: ... {} more", list.len() - 10));
            }
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "campaign {}: redis total={} available={} reserved={} paid={}; limit {}/user; \
             {} requests, decisions {:?}; {} reserved requests ({} units); {} orders in store",
            self.campaign_id,
            self.total,
            self.available,
            self.reserved,
            self.paid,
            self.per_user_limit,
            self.requests,
            self.by_status,
            self.reserved_requests,
            self.reserved_units,
            self.store_orders
        )?;
        let v = self.violations();
        if v.is_empty() {
            write!(f, "  clean")
        } else {
            for line in v {
                writeln!(f, "  {line}")?;
            }
            Ok(())
        }
    }
}

fn same_decision(a: &Decision, b: &Decision) -> bool {
    a.request_id == b.request_id
        && a.campaign_id == b.campaign_id
        && a.user_id == b.user_id
        && a.status == b.status
        && a.order_id == b.order_id
        && a.quantity == b.quantity
}

fn parse_i64(map: &HashMap<String, String>, field: &str) -> i64 {
    map.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Checks one campaign.
///
/// `expected` lists the requests the test sent to this campaign, with the
/// decision HTTP answered (None for requests produced straight to Kafka, or
/// when HTTP gave none). Decisions of other requests of the campaign found
/// on the orders topic are checked as well. The store is polled for up to
/// `settle` until it holds one order per reserved request.
pub(crate) async fn check_campaign(
    stack: &Stack,
    api: &Api,
    log: &DecisionLog,
    campaign: &str,
    expected: &HashMap<String, Option<Decision>>,
    settle: Duration,
) -> Report {
    let mut r = Report {
        campaign_id: campaign.to_owned(),
        requests: expected.len(),
        ..Report::default()
    };
    let view = api
        .campaign(campaign)
        .await
        .unwrap_or_else(|e| panic!("invariants: {e}"));
    r.per_user_limit = view.per_user_limit;

    // Every decision of every request, from Kafka and from HTTP.
    let mut all: HashMap<&str, Vec<&Decision>> = HashMap::new();
    for (id, ds) in log.campaign(campaign) {
        all.entry(id.as_str()).or_default().extend(ds.iter());
    }
    for (id, d) in expected {
        let entry = all.entry(id.as_str()).or_default();
        if let Some(d) = d {
            if d.status != DecisionStatus::Pending {
                entry.push(d);
            }
        }
    }

    // One final decision per request; conflicts and undecided ones noted.
    let mut finals: HashMap<&str, &Decision> = HashMap::new();
    for (id, ds) in &all {
        let Some(first) = ds.first() else {
            r.undecided_requests.push((*id).to_owned());
            continue;
        };
        if let Some(other) = ds.iter().find(|d| !same_decision(first, d)) {
            r.conflicting_decisions
                .push(format!("{id}: {first:?} vs {other:?}"));
        }
        if first.campaign_id != campaign {
            r.conflicting_decisions.push(format!(
                "{id}: sent to {campaign}, decided for {}",
                first.campaign_id
            ));
        }
        finals.insert(id, first);
    }
    for d in finals.values() {
        *r.by_status.entry(d.status.as_str().to_owned()).or_default() += 1;
    }

    let reserved: Vec<&Decision> = finals
        .values()
        .copied()
        .filter(|d| d.status == DecisionStatus::Reserved)
        .collect();
    r.reserved_requests = reserved.len();
    r.reserved_units = reserved
        .iter()
        .map(|d| i64::from(d.quantity.unwrap_or(1)))
        .sum();

    // Per-user holdings by the decisions.
    let mut held: HashMap<&str, i64> = HashMap::new();
    for d in &reserved {
        *held.entry(d.user_id.as_str()).or_default() += i64::from(d.quantity.unwrap_or(1));
        match &d.order_id {
            Some(o) if *o == order_id_for(&d.request_id) => {}
            other => r.duplicate_orders.push(format!(
                "request {} reserved with order id {other:?}, expected {}",
                d.request_id,
                order_id_for(&d.request_id)
            )),
        }
    }
    for (user, units) in &held {
        if *units > i64::from(view.per_user_limit) {
            r.users_over_limit.push(format!(
                "{user} holds {units} units by the decisions (limit {})",
                view.per_user_limit
            ));
        }
    }

    // Redis counters.
    let keys = stack.keys.campaign(campaign);
    let mut con = stack.redis_con().await;
    let stock: HashMap<String, String> = con
        .hgetall(&keys.stock)
        .await
        .unwrap_or_else(|e| panic!("HGETALL {}: {e}", keys.stock));
    let users: HashMap<String, String> = con
        .hgetall(&keys.users)
        .await
        .unwrap_or_else(|e| panic!("HGETALL {}: {e}", keys.users));
    r.total = parse_i64(&stock, "total");
    r.available = parse_i64(&stock, "available");
    r.reserved = parse_i64(&stock, "reserved");
    r.paid = parse_i64(&stock, "paid");
    if stock.is_empty() {
        r.counters.push(format!("no stock hash at {}", keys.stock));
    }
    if r.total != view.stock.total as i64 {
        r.counters.push(format!(
            "redis total {} but the campaign view says {}",
            r.total, view.stock.total
        ));
    }
    if r.available < 0 || r.reserved < 0 || r.paid < 0 {
        r.oversold.push(format!(
            "negative counter: available={} reserved={} paid={}",
            r.available, r.reserved, r.paid
        ));
    }
    if r.reserved + r.paid > r.total {
        r.oversold.push(format!(
            "redis reserved {} + paid {} > total {}",
            r.reserved, r.paid, r.total
        ));
    }
    if r.reserved_units > r.total {
        r.oversold.push(format!(
            "{} units reserved by the decisions > total {}",
            r.reserved_units, r.total
        ));
    }
    if r.available + r.reserved + r.paid != r.total {
        r.counters.push(format!(
            "available {} + reserved {} + paid {} != total {}",
            r.available, r.reserved, r.paid, r.total
        ));
    }
    if r.reserved + r.paid != r.reserved_units {
        r.counters.push(format!(
            "redis reserved {} + paid {} != {} units reserved by the decisions",
            r.reserved, r.paid, r.reserved_units
        ));
    }
    let mut users_sum = 0;
    for (user, units) in &users {
        let units: i64 = units.parse().unwrap_or(-1);
        users_sum += units;
        if units > i64::from(view.per_user_limit) {
            r.users_over_limit.push(format!(
                "{user} holds {units} units in redis (limit {})",
                view.per_user_limit
            ));
        }
        if held.get(user.as_str()).copied().unwrap_or(0) != units {
            r.counters.push(format!(
                "redis says {user} holds {units}, the decisions say {}",
                held.get(user.as_str()).copied().unwrap_or(0)
            ));
        }
    }
    for (user, units) in &held {
        if !users.contains_key(*user) {
            r.counters.push(format!(
                "the decisions say {user} holds {units}, redis has no entry"
            ));
        }
    }
    if users_sum != r.reserved + r.paid {
        r.counters.push(format!(
            "users hash sums to {users_sum}, redis reserved + paid = {}",
            r.reserved + r.paid
        ));
    }

    // The store, once it has caught up (or `settle` has passed).
    let deadline = Instant::now() + settle;
    let orders: Vec<OrderView> = loop {
        let orders = api
            .orders(Some(campaign), None)
            .await
            .unwrap_or_else(|e| panic!("invariants: {e}"));
        let wanted: HashSet<&str> = reserved
            .iter()
            .filter_map(|d| d.order_id.as_deref())
            .collect();
        let have: HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
        if wanted.is_subset(&have) || Instant::now() >= deadline {
            break orders;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    r.store_orders = orders.len();
    if orders.len() >= 1000 {
        r.unexplained_orders.push(
            "the store listing hit its limit of 1000; the test campaign is too big to check"
                .to_owned(),
        );
    }
    let mut seen_orders: HashMap<&str, usize> = HashMap::new();
    let mut seen_requests: HashMap<&str, usize> = HashMap::new();
    for o in &orders {
        *seen_orders.entry(o.order_id.as_str()).or_default() += 1;
        *seen_requests.entry(o.request_id.as_str()).or_default() += 1;
        if o.order_id != order_id_for(&o.request_id) {
            r.duplicate_orders.push(format!(
                "store order {} is not derived from its request {}",
                o.order_id, o.request_id
            ));
        }
        if o.campaign_id != campaign {
            r.unexplained_orders.push(format!(
                "order {} listed for {campaign} belongs to {}",
                o.order_id, o.campaign_id
            ));
        }
        match finals.get(o.request_id.as_str()) {
            Some(d) if d.status == DecisionStatus::Reserved => {
                if d.user_id != o.user_id || d.quantity.unwrap_or(1) != o.quantity {
                    r.unexplained_orders.push(format!(
                        "order {} ({} x{}) differs from its decision ({} x{})",
                        o.order_id,
                        o.user_id,
                        o.quantity,
                        d.user_id,
                        d.quantity.unwrap_or(1)
                    ));
                }
            }
            Some(d) => r.unexplained_orders.push(format!(
                "order {} for request {} decided {}",
                o.order_id,
                o.request_id,
                d.status.as_str()
            )),
            None => r.unexplained_orders.push(format!(
                "order {} for request {} that has no decision",
                o.order_id, o.request_id
            )),
        }
    }
    for (id, n) in seen_orders {
        if n > 1 {
            r.duplicate_orders
                .push(format!("order {id} listed {n} times"));
        }
    }
    for (id, n) in seen_requests {
        if n > 1 {
            r.duplicate_orders
                .push(format!("request {id} has {n} orders"));
        }
    }
    let in_store: HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    for d in &reserved {
        if let Some(o) = &d.order_id {
            if !in_store.contains(o.as_str()) {
                r.orders_missing_from_store
                    .push(format!("order {o} of request {}", d.request_id));
            }
        }
    }
    r.undecided_requests.sort();
    r
}
