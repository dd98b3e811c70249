//! What the checks found for one campaign.

use std::collections::BTreeMap;
use std::fmt;

use seckill_schemas::state::StockCounters;

/// Examples of each kind of problem shown to people.
const EXAMPLES: usize = 5;

/// What was found wrong with one campaign, by guarantee. Each list holds
/// one entry per violation found; a healthy, settled campaign has them all
/// empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignReport {
    pub campaign_id: String,
    /// The campaign's Redis counters as read.
    pub counters: StockCounters,
    /// Orders the store holds for the campaign.
    pub stored_orders: usize,
    /// Units of the announced decisions that made an order.
    pub reserved_units: i64,
    /// Announced decisions by status (the first of each request).
    pub by_status: BTreeMap<&'static str, usize>,

    /// Guarantee 1 (no oversell): units out (Redis, store, or decisions net of
    /// returns) beyond the stock ever added, or a negative counter.
    pub oversold: Vec<String>,
    /// Guarantee 2 (conservation): available + reserved + paid != total, or counters
    /// that disagree with the store's live orders or the decisions.
    pub counters_mismatch: Vec<String>,
    /// Guarantee 2 (conservation): an order whose units went back on sale twice.
    pub double_returned_stock: Vec<String>,
    /// Guarantee 3 (no duplicate): two orders for one request, or an order id not
    /// derived from its request id.
    pub duplicate_orders: Vec<String>,
    /// Guarantee 3 (no duplicate): a user holding more than the per-user limit.
    pub users_over_limit: Vec<String>,
    /// Guarantee 3 (no duplicate): one request decided two ways.
    pub conflicting_decisions: Vec<String>,
    /// Guarantee 4 (nothing lost): a request sent without a decision.
    pub undecided_requests: Vec<String>,
    /// Guarantee 4 (nothing lost): a decision's order that the store does not hold.
    pub orders_missing_from_store: Vec<String>,
    /// Guarantee 4 (nothing lost): a store order that no decision accounts for, or
    /// that differs from its decision (checked against an order log).
    pub unexplained_orders: Vec<String>,
    /// Guarantee 4 (nothing lost): a store order behind the furthest status the order
    /// log announced for it (a state change that never landed).
    pub stale_orders: Vec<String>,
}

impl CampaignReport {
    /// Every kind of problem with how often it was found.
    pub fn problems(&self) -> [(&'static str, usize); 10] {
        [
            ("oversold", self.oversold.len()),
            ("counters", self.counters_mismatch.len()),
            ("double_returned_stock", self.double_returned_stock.len()),
            ("duplicate_orders", self.duplicate_orders.len()),
            ("users_over_limit", self.users_over_limit.len()),
            ("conflicting_decisions", self.conflicting_decisions.len()),
            ("undecided_requests", self.undecided_requests.len()),
            (
                "orders_missing_from_store",
                self.orders_missing_from_store.len(),
            ),
            ("unexplained_orders", self.unexplained_orders.len()),
            ("stale_orders", self.stale_orders.len()),
        ]
    }

    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems().iter().all(|(_, n)| *n == 0)
    }

    /// The problems that in-flight events settle (the store or Redis still
    /// catching up with the log, decisions still on their way); checks are
    /// repeated until this is 0 before a report is final.
    pub fn unsettled(&self) -> usize {
        self.orders_missing_from_store.len()
            + self.counters_mismatch.len()
            + self.stale_orders.len()
            + self.undecided_requests.len()
    }

    fn lists(&self) -> [(&'static str, &Vec<String>); 10] {
        [
            ("oversold", &self.oversold),
            ("counters", &self.counters_mismatch),
            ("double-returned stock", &self.double_returned_stock),
            ("duplicate order", &self.duplicate_orders),
            ("user over limit", &self.users_over_limit),
            ("conflicting decision", &self.conflicting_decisions),
            ("undecided request", &self.undecided_requests),
            ("missing from store", &self.orders_missing_from_store),
            ("unexplained order", &self.unexplained_orders),
            ("stale order", &self.stale_orders),
        ]
    }
}

impl fmt::Display for CampaignReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        write!(
            f,
            "campaign {}: redis total={} available={} reserved={} paid={}; decisions {:?} \
             ({} units in orders); {} stored orders;",
            self.campaign_id,
            c.total,
            c.available,
            c.reserved,
            c.paid,
            self.by_status,
            self.reserved_units,
            self.stored_orders
        )?;
        let bad: Vec<String> = self
            .problems()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        if bad.is_empty() {
            return write!(f, " clean");
        }
        write!(f, " {}", bad.join(" "))?;
        for (kind, list) in self.lists() {
            for v in list.iter().take(EXAMPLES) {
                write!(f, "\n  {kind}: {v}")?;
            }
            if list.len() > EXAMPLES {
                write!(f, "\n  {kind}: ... {} more", list.len() - EXAMPLES)?;
            }
        }
        Ok(())
    }
}
