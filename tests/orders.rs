//! Orders after the reservation: pay, cancel and expiry, the states an
//! order goes through and the answers each command gets, the orders topic
//! as the record of them (replayed, the store does not change), and the
//! fulfilment requests of paid orders.
//!
//! | guarantee | test |
//! | --- | --- |
//! | every order ends in the state its answer said; stock is conserved and no unit comes back twice, also when a pay races the expiry | `thousand_reservations_paid_cancelled_or_expired_with_racing_pays_conserve_stock` |
//! | a pay after the deadline is 409 expired and takes no stock | `late_pay_after_expiry_is_409_expired_and_leaves_stock_untouched` |
//! | pay and cancel answer by the order's state and owner; retries get the same answer | `pay_and_cancel_answer_by_order_state_and_owner` |
//! | a pay answered 202 can be followed at GET /v1/requests | `pay_answered_202_can_be_followed_at_get_requests` |
//! | the sink applies order status monotonically (replays change nothing); one fulfilment per paid order | `replaying_the_orders_topic_leaves_every_order_status_unchanged` |
//!
//! Every test runs the real `seckill` binary on a private redis-server and
//! tansu broker (see tests/common).
//!
//! Run: `cargo test -p seckill-cli --test orders -- --test-threads=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use rdkafka::message::{Message, OwnedMessage};
use redis::AsyncCommands;
use serde_json::json;

use common::kafka::{order_event, produce_exact};
use common::sale::{
    all_orders, buy, campaign_body, create, decision_count, order_command, participation,
    produce_purchases, sleep_until_ms, stats, stock_of, wait_decided, Answer,
};
use common::{
    assert_clean, assert_none, check_campaign, eventually, new_request_id, read_decisions,
    read_topic, token, within, Api, Producer, Stack,
};
use seckill_schemas::{
    now_ms, order_id_for, CampaignState, Decision, DecisionStatus, FulfilmentRequested, OrderEvent,
    OrderStatus, OrderView,
};

// ---------------------------------------------------------------------------
// Helpers of this suite

/// Every order of a campaign in a store opened directly (paging).
async fn store_orders(store: &dyn seckill_store::OrderStore, cid: &str) -> Vec<OrderView> {
    let mut out: Vec<OrderView> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_orders(&seckill_store::OrderFilter {
                campaign_id: Some(cid.to_owned()),
                user_id: None,
                limit: 1000,
                after: after.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("list orders: {e}"));
        let n = page.len();
        after = page.last().map(|o| o.order_id.clone());
        out.extend(page);
        if n < 1000 {
            return out;
        }
    }
}

fn count_by_status(orders: &[OrderView]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in orders {
        *m.entry(o.status.as_str().to_owned()).or_default() += 1;
    }
    m
}

/// Order id -> the distinct (status, decided_at_ms) of the paid, cancelled
/// and expired events found for it.
fn transitions(log: &[OwnedMessage]) -> HashMap<String, BTreeSet<(String, i64)>> {
    let mut out: HashMap<String, BTreeSet<(String, i64)>> = HashMap::new();
    for m in log {
        let (status, e) = match order_event(m) {
            Some(OrderEvent::Paid(e)) => ("paid", e),
            Some(OrderEvent::Cancelled(e)) => ("cancelled", e),
            Some(OrderEvent::Expired(e)) => ("expired", e),
            _ => continue,
        };
        out.entry(e.order_id.clone())
            .or_default()
            .insert((status.to_owned(), e.decided_at_ms));
    }
    out
}

/// Waits until GET /v1/orders/{id} shows `status`.
async fn wait_order_status(
    api: &Api,
    order_id: &str,
    status: &str,
    timeout: Duration,
) -> OrderView {
    eventually(timeout, Duration::from_millis(100), || async {
        let r = api.get(&format!("/v1/orders/{order_id}")).await?;
        if r.status != 200 {
            return Err(format!("{}: {}", r.status, r.body));
        }
        let o: OrderView = serde_json::from_value(r.body.clone()).map_err(|e| e.to_string())?;
        if o.status.as_str() == status {
            Ok(o)
        } else {
            Err(format!("status {}", o.status))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("order {order_id} never became {status}: {e}"))
}

/// A `reserved` event for a made-up order of a made-up campaign: put last
/// on a partition, its arrival in the store says the sink got that far.
/// Its order id is the one derived from its request id, as the sink checks.
fn sentinel_event(request_id: &str) -> Vec<u8> {
    let now = now_ms();
    serde_json::to_vec(&json!({
        "type": "reserved",
        "schema_version": 1,
        "request_id": request_id,
        "order_id": seckill_schemas::order_id_for(request_id),
        "campaign_id": "zz-sentinel",
        "user_id": "sentinel",
        "quantity": 1,
        "price": 0,
        "requested_at_ms": now,
        "decided_at_ms": now,
        "expires_at_ms": now + 600_000,
    }))
    .expect("json")
}

/// Appends one sentinel order per partition of `partitions`; returns their ids.
async fn append_sentinels(
    producer: &Producer,
    topic: &str,
    partitions: &BTreeSet<i32>,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut messages = Vec::new();
    for p in partitions {
        let request_id = format!("sentinel-{p}-{}", token(8));
        messages.push((
            *p,
            Some(b"zz-sentinel".to_vec()),
            sentinel_event(&request_id),
        ));
        ids.push(seckill_schemas::order_id_for(&request_id));
    }
    produce_exact(producer, topic, &messages).await;
    ids
}

// ---------------------------------------------------------------------------
// Paid, cancelled and expired, with pays racing the expiry

#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    /// Pay right after the reservation.
    Pay,
    /// Cancel right after the reservation.
    Cancel,
    /// Do nothing: the reservation expires.
    Leave,
    /// Pay at deadline + this many ms (negative: before it).
    Race(i64),
    /// Pay and cancel at once, right after the reservation.
    PayAndCancel,
}

#[derive(Debug)]
struct Held {
    user: String,
    plan: Plan,
    decision: Decision,
    answer: Option<Answer>,
    /// The cancel of a PayAndCancel.
    rival: Option<Answer>,
}

/// 1,000 users reserve one unit each with a 2 s payment timeout; a third
/// pays at once, a third cancels at once (one in ten of them sends a pay
/// at the same moment: exactly one of the two wins), a third is left to
/// expire, and for a third of those a pay is sent around the deadline,
/// racing the expiry. Afterwards every order is in exactly the terminal state its API
/// answer said, the counters conserve stock (available + reserved + paid =
/// total, reserved = 0, paid = paid orders, available = total - paid, so no
/// unit came back twice), and the units that came back sell exactly once.
/// A pay or cancel sent right after the reservation's answer always finds
/// the order (no 404); a transient 404 is retried so that everything else
/// is checked first, and reported at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_reservations_paid_cancelled_or_expired_with_racing_pays_conserve_stock() {
    const N: usize = 1000;
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("expiry-{}", token(6));
    create(
        &api,
        &campaign_body(&cid, N as u64, json!({ "payment_timeout_secs": 2 })),
        CampaignState::Active,
    )
    .await;

    let plan_of = |i: usize| match i % 3 {
        0 => Plan::Pay,
        1 if i % 30 == 1 => Plan::PayAndCancel,
        1 => Plan::Cancel,
        _ if i % 9 == 2 => Plan::Race(-400 + ((i * 37) % 601) as i64),
        _ => Plan::Leave,
    };
    let started = Instant::now();
    let held: Vec<Held> = within(
        600,
        "1,000 reservations and their pays and cancels",
        stream::iter(0..N)
            .map(|i| {
                let api = api.clone();
                let cid = cid.clone();
                let plan = plan_of(i);
                async move {
                    let user = format!("buyer-{i:04}");
                    let d = api
                        .purchase_decided(&cid, &user, &format!("buy-{i}"), None)
                        .await;
                    assert_eq!(d.status, DecisionStatus::Reserved, "{user}: {d:?}");
                    let order = d.order_id.clone().expect("order id");
                    let expires = d.expires_at_ms.expect("a reservation has a deadline");
                    let mut rival = None;
                    let answer = match plan {
                        Plan::Pay => Some(order_command(&api, &order, &user, "pay", None).await),
                        Plan::Cancel => {
                            Some(order_command(&api, &order, &user, "cancel", None).await)
                        }
                        Plan::Leave => None,
                        Plan::PayAndCancel => {
                            let (pay, cancel) = futures::join!(
                                order_command(&api, &order, &user, "pay", None),
                                order_command(&api, &order, &user, "cancel", None)
                            );
                            rival = Some(cancel);
                            Some(pay)
                        }
                        Plan::Race(offset) => {
                            sleep_until_ms(expires + offset).await;
                            Some(order_command(&api, &order, &user, "pay", None).await)
                        }
                    };
                    Held {
                        user,
                        plan,
                        decision: d,
                        answer,
                        rival,
                    }
                }
            })
            .buffer_unordered(100)
            .collect(),
    )
    .await;
    eprintln!("reservations and commands done in {:?}", started.elapsed());

    // What each answer says the order's final state is.
    let mut violations = Vec::new();
    let mut expected: HashMap<String, &'static str> = HashMap::new();
    let mut answer_counts: BTreeMap<String, usize> = BTreeMap::new();
    for h in &held {
        let order = h.decision.order_id.clone().expect("order id");
        let expires = h.decision.expires_at_ms.expect("deadline");
        let what = match (&h.plan, &h.answer) {
            (Plan::Leave, None) => "expired",
            (Plan::PayAndCancel, Some(pay)) => {
                // Exactly one of the two wins; the other is told who did.
                let cancel = h.rival.as_ref().expect("the cancel's answer");
                *answer_counts
                    .entry(format!(
                        "pay+cancel: {} / {}",
                        pay.describe(),
                        cancel.describe()
                    ))
                    .or_default() += 1;
                if pay.is_ok("paid") && cancel.is_refused(409, "already_paid") {
                    "paid"
                } else if cancel.is_ok("cancelled") && pay.is_refused(409, "cancelled") {
                    "cancelled"
                } else if pay.is_refused(409, "expired")
                    && cancel.is_refused(409, "expired")
                    && pay.answered_ms.min(cancel.answered_ms) + 5 >= expires
                {
                    "expired"
                } else {
                    violations.push(format!(
                        "{} {order}: pay and cancel at once answered {} and {}",
                        h.user,
                        pay.describe(),
                        cancel.describe()
                    ));
                    continue;
                }
            }
            (plan, Some(a)) => {
                let verb_ok = if *plan == Plan::Cancel {
                    "cancelled"
                } else {
                    "paid"
                };
                let kind = match plan {
                    Plan::Race(_) => "race".to_owned(),
                    other => format!("{other:?}").to_lowercase(),
                };
                *answer_counts
                    .entry(format!("{kind}: {}", a.describe()))
                    .or_default() += 1;
                if a.is_ok(verb_ok) {
                    if a.sent_ms > expires + 5 {
                        violations.push(format!(
                            "{} {order}: {verb_ok} though sent {} ms after the deadline",
                            h.user,
                            a.sent_ms - expires
                        ));
                    }
                    verb_ok
                } else if a.is_refused(409, "expired") {
                    if a.answered_ms + 5 < expires {
                        violations.push(format!(
                            "{} {order}: 409 expired answered {} ms before the deadline",
                            h.user,
                            expires - a.answered_ms
                        ));
                    }
                    "expired"
                } else {
                    violations.push(format!(
                        "{} {order} ({plan:?}): unexpected answer {}: {}",
                        h.user,
                        a.describe(),
                        a.body
                    ));
                    continue;
                }
            }
            (plan, None) => unreachable!("{plan:?} without an answer"),
        };
        expected.insert(order, what);
    }
    eprintln!("answers: {answer_counts:?}");
    assert_none("pay/cancel answers", &violations);
    assert_eq!(expected.len(), N, "one order per reservation");

    let want_paid = expected.values().filter(|s| **s == "paid").count();
    let want_cancelled = expected.values().filter(|s| **s == "cancelled").count();
    let want_expired = expected.values().filter(|s| **s == "expired").count();
    eprintln!("expected: {want_paid} paid, {want_cancelled} cancelled, {want_expired} expired");
    // The test did what it says: most immediate pays and cancels won.
    let pay_plan = held.iter().filter(|h| h.plan == Plan::Pay).count();
    let early_paid = held
        .iter()
        .filter(|h| h.plan == Plan::Pay && h.answer.as_ref().is_some_and(|a| a.is_ok("paid")))
        .count();
    let cancel_plan = held.iter().filter(|h| h.plan == Plan::Cancel).count();
    let early_cancelled = held
        .iter()
        .filter(|h| {
            h.plan == Plan::Cancel && h.answer.as_ref().is_some_and(|a| a.is_ok("cancelled"))
        })
        .count();
    assert!(
        early_paid * 10 >= pay_plan * 9,
        "only {early_paid} of {pay_plan} immediate pays were in time"
    );
    assert!(
        early_cancelled * 10 >= cancel_plan * 9,
        "only {early_cancelled} of {cancel_plan} immediate cancels were in time"
    );
    let racers: Vec<&Held> = held
        .iter()
        .filter(|h| matches!(h.plan, Plan::Race(_)))
        .collect();
    let racers_paid = racers
        .iter()
        .filter(|h| h.answer.as_ref().is_some_and(|a| a.is_ok("paid")))
        .count();
    eprintln!(
        "racing pays: {racers_paid} paid, {} expired",
        racers.len() - racers_paid
    );
    assert!(
        racers_paid < racers.len(),
        "no racing pay lost to the expiry"
    );

    // Settle: nothing reserved in Redis, nothing reserved in the store.
    let view = eventually(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let v = api.campaign(&cid).await?;
            if v.stock.reserved == 0 {
                Ok(v)
            } else {
                Err(format!("{:?}", v.stock))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("reservations never all ended: {e}"));
    let orders = eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let orders = all_orders(&api, &cid).await;
            if orders.len() >= N && orders.iter().all(|o| o.status != OrderStatus::Reserved) {
                Ok(orders)
            } else {
                Err(format!(
                    "{} orders, by status {:?}",
                    orders.len(),
                    count_by_status(&orders)
                ))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the store never settled: {e}"));
    eprintln!(
        "store: {:?}; stock {:?}",
        count_by_status(&orders),
        view.stock
    );

    // Every order in exactly the state its answer said.
    let mut violations = Vec::new();
    let ids: HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    assert_eq!(ids.len(), orders.len(), "an order listed twice");
    assert_eq!(orders.len(), N, "orders in the store");
    let by_id: HashMap<&str, &Held> = held
        .iter()
        .map(|h| (h.decision.order_id.as_deref().expect("order id"), h))
        .collect();
    for o in &orders {
        let Some(h) = by_id.get(o.order_id.as_str()) else {
            violations.push(format!("order {} nobody reserved", o.order_id));
            continue;
        };
        let want = expected[&o.order_id];
        if o.status.as_str() != want {
            violations.push(format!(
                "{} order {} ({:?}, answer {:?}) is {} in the store, expected {want}",
                h.user,
                o.order_id,
                h.plan,
                h.answer.as_ref().map(Answer::describe),
                o.status
            ));
        }
        if Some(o.expires_at_ms) != h.decision.expires_at_ms {
            violations.push(format!(
                "order {} deadline {} in the store, {:?} in the decision",
                o.order_id, o.expires_at_ms, h.decision.expires_at_ms
            ));
        }
        let in_time = o.updated_at_ms < o.expires_at_ms;
        match o.status.as_str() {
            "paid" | "cancelled" if !in_time => violations.push(format!(
                "order {} {} at {} after its deadline {}",
                o.order_id, o.status, o.updated_at_ms, o.expires_at_ms
            )),
            "expired" if in_time => violations.push(format!(
                "order {} expired at {}, before its deadline {}",
                o.order_id, o.updated_at_ms, o.expires_at_ms
            )),
            _ => {}
        }
        if o.order_id != order_id_for(&o.request_id) || o.user_id != h.user {
            violations.push(format!(
                "order {} does not match its reservation: {o:?}",
                o.order_id
            ));
        }
    }
    assert_none("store vs answers", &violations);
    let counts = count_by_status(&orders);
    assert_eq!(
        counts.get("paid").copied().unwrap_or(0),
        want_paid,
        "{counts:?}"
    );
    assert_eq!(
        counts.get("cancelled").copied().unwrap_or(0),
        want_cancelled,
        "{counts:?}"
    );
    assert_eq!(
        counts.get("expired").copied().unwrap_or(0),
        want_expired,
        "{counts:?}"
    );

    // Stock conservation, nothing returned twice.
    let s = view.stock;
    assert_eq!(s.total, N as u64, "{s:?}");
    assert_eq!(s.reserved, 0, "{s:?}");
    assert_eq!(s.paid, want_paid as u64, "paid units = paid orders: {s:?}");
    assert_eq!(
        s.available,
        s.total - s.paid,
        "available = total - paid: {s:?}"
    );
    assert_eq!(s.available + s.reserved + s.paid, s.total, "{s:?}");
    let keys = stack.keys.campaign(&cid);
    let mut con = stack.redis_con().await;
    let users: HashMap<String, i64> = con.hgetall(&keys.users).await.expect("HGETALL users");
    let holders: BTreeSet<&str> = users
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|(u, _)| u.as_str())
        .collect();
    let payers: BTreeSet<&str> = held
        .iter()
        .filter(|h| expected[h.decision.order_id.as_deref().unwrap_or("")] == "paid")
        .map(|h| h.user.as_str())
        .collect();
    assert_eq!(holders, payers, "users holding units = users who paid");
    assert!(users.values().all(|n| *n == 0 || *n == 1), "{users:?}");
    let st = stats(&api, &cid).await;
    assert_eq!(st["orders_awaiting_payment"], json!(0), "{st}");
    assert_eq!(decision_count(&st, "reserved"), N as u64, "{st}");

    // The orders topic: one terminal transition per order, the one stored.
    let log = read_topic(
        &stack,
        &stack.topics.orders,
        N * 2,
        Duration::from_secs(120),
    )
    .await;
    let trans = transitions(&log);
    let mut violations = Vec::new();
    for (order, want) in &expected {
        let statuses: BTreeSet<&str> = trans
            .get(order)
            .map(|t| t.iter().map(|(s, _)| s.as_str()).collect())
            .unwrap_or_default();
        if statuses.len() != 1 || !statuses.contains(want) {
            violations.push(format!(
                "order {order}: transitions {:?} on the topic, expected only {want}",
                trans.get(order)
            ));
        }
    }
    assert_none("transitions on the orders topic", &violations);

    // The units that came back sell exactly once: `available` more buyers
    // get them, the next ten are sold out. (All of them are decided well
    // within the 2 s timeout, so none of these reservations expires and
    // frees a unit before the last of them is decided.)
    let back = s.available as usize;
    let producer = stack.producer();
    let resale: Vec<(String, String)> = (0..back + 10)
        .map(|i| (new_request_id(), format!("late-{i:04}")))
        .collect();
    produce_purchases(&stack, &producer, &cid, &resale).await;
    let st = wait_decided(&api, &cid, (N + back + 10) as u64, Duration::from_secs(120)).await;
    let mut resale_status: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (rid, _) in &resale {
        let d = api.wait_decision(rid, Duration::from_secs(60)).await;
        *resale_status.entry(d.status.as_str()).or_default() += 1;
    }
    eprintln!(
        "resale of {back} returned units to {} buyers: {resale_status:?}",
        resale.len()
    );
    assert_eq!(
        resale_status.get("reserved").copied().unwrap_or(0),
        back,
        "{resale_status:?} {st}"
    );
    assert_eq!(
        resale_status.get("sold_out").copied().unwrap_or(0),
        10,
        "{resale_status:?}"
    );
    let v = api.campaign(&cid).await.expect("view");
    assert_eq!(v.stock.paid, want_paid as u64, "{:?}", v.stock);
    assert_eq!(
        v.stock.available + v.stock.reserved + v.stock.paid,
        v.stock.total,
        "{:?}",
        v.stock
    );

    // The shared checker agrees: nothing oversold, doubled, lost or
    // returned twice, over the whole sale and the resale.
    let decisions = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        N + back + 10,
        Duration::from_secs(120),
    )
    .await;
    let expected: HashMap<String, Option<Decision>> = held
        .iter()
        .map(|h| (h.decision.request_id.clone(), Some(h.decision.clone())))
        .chain(resale.iter().map(|(rid, _)| (rid.clone(), None)))
        .collect();
    let report = check_campaign(
        &stack,
        &api,
        &decisions,
        &cid,
        &expected,
        Duration::from_secs(120),
    )
    .await;
    assert_clean(&report);

    // A pay or cancel sent as soon as the reservation is answered finds
    // the order: never a 404 "no order" for an order the client was just
    // given. (Checked last so that the checks above run regardless.)
    let early_404: Vec<String> = held
        .iter()
        .flat_map(|h| h.answer.iter().chain(h.rival.iter()).map(move |a| (h, a)))
        .filter(|(_, a)| a.early_404s > 0)
        .map(|(h, a)| {
            format!(
                "{} ({:?}) order {}: {} x 404 \"no order\" before {}",
                h.user,
                h.plan,
                h.decision.order_id.as_deref().unwrap_or("?"),
                a.early_404s,
                a.describe()
            )
        })
        .collect();
    assert_none(
        "pay/cancel right after the reservation answered 404 for an existing order",
        &early_404,
    );
    drop(all);
}

// ---------------------------------------------------------------------------
// A late pay

/// A pay after the deadline is refused with 409 `expired` and does not
/// touch the stock: (a) with the sweeper idle, the pay itself finds the
/// order overdue; the unit comes back once (by the expiry) and later pays,
/// cancels and sweeps change nothing; (b) with the sweeper running, the
/// order expires on its own; a pay afterwards leaves the counters as they
/// were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_pay_after_expiry_is_409_expired_and_leaves_stock_untouched() {
    let stack = Stack::start().await;
    let cid = format!("late-{}", token(6));

    // (a) The sweeper idles (one sweep an hour).
    let idle = stack
        .seckill(&["all"], &[("SECKILL_EXPIRY_INTERVAL_MS", "3600000")])
        .await;
    let api = Api::new(idle.http.as_deref().expect("http"));
    create(
        &api,
        &campaign_body(&cid, 3, json!({ "payment_timeout_secs": 1 })),
        CampaignState::Active,
    )
    .await;
    let alice = buy(&api, &cid, "alice", "alice-1", None).await;
    assert_eq!(alice.status, DecisionStatus::Reserved, "{alice:?}");
    let alice_order = alice.order_id.clone().expect("order");
    sleep_until_ms(alice.expires_at_ms.expect("deadline") + 500).await;
    let before = api.campaign(&cid).await.expect("view");
    assert_eq!(
        stock_of(&before),
        (3, 2, 1, 0),
        "past its deadline but not swept yet, the order still holds its unit"
    );
    let late = order_command(&api, &alice_order, "alice", "pay", None).await;
    assert!(
        late.is_refused(409, "expired"),
        "late pay: {} {}",
        late.describe(),
        late.body
    );
    let after = api.campaign(&cid).await.expect("view");
    assert_eq!(
        stock_of(&after),
        (3, 3, 0, 0),
        "the expiry the late pay found returns the unit, once; the pay takes nothing"
    );
    // The same pay again, a new pay, a cancel: all 409 expired, nothing moves.
    let again = order_command(&api, &alice_order, "alice", "pay", None).await;
    assert!(again.is_refused(409, "expired"), "{}", again.describe());
    let keyed = order_command(&api, &alice_order, "alice", "pay", Some("second-try")).await;
    assert!(keyed.is_refused(409, "expired"), "{}", keyed.describe());
    let cancel = order_command(&api, &alice_order, "alice", "cancel", None).await;
    assert!(cancel.is_refused(409, "expired"), "{}", cancel.describe());
    assert_eq!(
        stock_of(&api.campaign(&cid).await.expect("view")),
        (3, 3, 0, 0)
    );
    wait_order_status(&api, &alice_order, "expired", Duration::from_secs(30)).await;
    drop(idle);

    // (b) The sweeper runs (every 500 ms, the default).
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    // Sweeps find nothing of alice's to return again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stock_of(&api.campaign(&cid).await.expect("view")),
        (3, 3, 0, 0)
    );
    let bob = buy(&api, &cid, "bob", "bob-1", None).await;
    assert_eq!(bob.status, DecisionStatus::Reserved, "{bob:?}");
    let bob_order = bob.order_id.clone().expect("order");
    let expired = wait_order_status(&api, &bob_order, "expired", Duration::from_secs(30)).await;
    assert!(
        expired.updated_at_ms >= expired.expires_at_ms,
        "{expired:?}"
    );
    let snapshot = eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let v = api.campaign(&cid).await?;
            if stock_of(&v) == (3, 3, 0, 0) {
                Ok(v)
            } else {
                Err(format!("{:?}", v.stock))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the swept unit did not come back: {e}"));
    for (verb, key) in [
        ("pay", None),
        ("pay", None),
        ("pay", Some("k2")),
        ("cancel", None),
    ] {
        let a = order_command(&api, &bob_order, "bob", verb, key).await;
        assert!(
            a.is_refused(409, "expired"),
            "{verb} after expiry: {} {}",
            a.describe(),
            a.body
        );
        assert_eq!(a.body["status"], json!(409), "{}", a.body);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let end = api.campaign(&cid).await.expect("view");
    assert_eq!(
        stock_of(&end),
        stock_of(&snapshot),
        "late pays changed the stock"
    );
    let keys = stack.keys.campaign(&cid);
    let mut con = stack.redis_con().await;
    let users: HashMap<String, i64> = con.hgetall(&keys.users).await.expect("HGETALL");
    assert!(
        users.values().all(|n| *n == 0),
        "nobody holds a unit: {users:?}"
    );

    // One expiry per order on the orders topic.
    let log = read_topic(&stack, &stack.topics.orders, 4, Duration::from_secs(60)).await;
    let trans = transitions(&log);
    for order in [&alice_order, &bob_order] {
        let t = trans.get(order.as_str()).cloned().unwrap_or_default();
        assert_eq!(t.len(), 1, "order {order}: transitions {t:?}");
        assert_eq!(t.iter().next().map(|(s, _)| s.as_str()), Some("expired"));
    }

    // The shared checker agrees: both units came back once, nothing held.
    let decisions = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        2,
        Duration::from_secs(60),
    )
    .await;
    let expected = HashMap::from([
        (alice.request_id.clone(), Some(alice.clone())),
        (bob.request_id.clone(), Some(bob.clone())),
    ]);
    let report = check_campaign(
        &stack,
        &api,
        &decisions,
        &cid,
        &expected,
        Duration::from_secs(30),
    )
    .await;
    assert_clean(&report);
    drop(all);
}

// ---------------------------------------------------------------------------
// Pay and cancel by state and owner

/// Pay and cancel answer by the order's state and owner: 403 not_owner for
/// a cancel by another user, 404 for an unknown order, 200 paid then 409 already_paid,
/// 200 cancelled then 409 cancelled; a retry of the same command gets the
/// same answer; a cancel returns its unit, a pay does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_and_cancel_answer_by_order_state_and_owner() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("cmds-{}", token(6));
    create(
        &api,
        &campaign_body(&cid, 5, json!({})),
        CampaignState::Active,
    )
    .await;
    let carol = buy(&api, &cid, "carol", "c1", None).await;
    let dave = buy(&api, &cid, "dave", "d1", None).await;
    let carol_order = carol.order_id.clone().expect("order");
    let dave_order = dave.order_id.clone().expect("order");
    assert_eq!(
        stock_of(&api.campaign(&cid).await.expect("view")),
        (5, 3, 2, 0)
    );

    let a = order_command(&api, &carol_order, "mallory", "cancel", None).await;
    assert!(
        a.is_refused(403, "not_owner"),
        "{} {}",
        a.describe(),
        a.body
    );
    let a = order_command(&api, &order_id_for("no-such-request"), "carol", "pay", None).await;
    assert_eq!(a.status, 404, "unknown order: {}", a.body);

    let paid = order_command(&api, &carol_order, "carol", "pay", None).await;
    assert!(paid.is_ok("paid"), "{} {}", paid.describe(), paid.body);
    assert_eq!(paid.body["order_id"], json!(carol_order));
    let retry = order_command(&api, &carol_order, "carol", "pay", None).await;
    assert!(
        retry.is_ok("paid"),
        "a retried pay gets the same answer: {}",
        retry.body
    );
    assert_eq!(retry.body["request_id"], paid.body["request_id"]);
    let again = order_command(&api, &carol_order, "carol", "pay", Some("another")).await;
    assert!(again.is_refused(409, "already_paid"), "{}", again.body);
    let cancel_paid = order_command(&api, &carol_order, "carol", "cancel", None).await;
    assert!(
        cancel_paid.is_refused(409, "already_paid"),
        "{}",
        cancel_paid.body
    );

    let cancelled = order_command(&api, &dave_order, "dave", "cancel", None).await;
    assert!(cancelled.is_ok("cancelled"), "{}", cancelled.body);
    let retry = order_command(&api, &dave_order, "dave", "cancel", None).await;
    assert!(
        retry.is_ok("cancelled"),
        "a retried cancel gets the same answer: {}",
        retry.body
    );
    let pay_cancelled = order_command(&api, &dave_order, "dave", "pay", None).await;
    assert!(
        pay_cancelled.is_refused(409, "cancelled"),
        "{}",
        pay_cancelled.body
    );
    let cancel_again = order_command(&api, &dave_order, "dave", "cancel", Some("k")).await;
    assert!(
        cancel_again.is_refused(409, "cancelled"),
        "{}",
        cancel_again.body
    );

    assert_eq!(
        stock_of(&api.campaign(&cid).await.expect("view")),
        (5, 4, 0, 1),
        "the cancel returned its unit once; the pay moved one to paid"
    );
    wait_order_status(&api, &carol_order, "paid", Duration::from_secs(30)).await;
    wait_order_status(&api, &dave_order, "cancelled", Duration::from_secs(30)).await;
    let carol_p = participation(&api, &cid, "carol").await;
    assert_eq!(carol_p["bought"], json!(true), "{carol_p}");
    let dave_p = participation(&api, &cid, "dave").await;
    assert_eq!(dave_p["bought"], json!(false), "{dave_p}");

    // The shared checker agrees: one paid unit, one returned once.
    let decisions = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        2,
        Duration::from_secs(60),
    )
    .await;
    let expected = HashMap::from([
        (carol.request_id.clone(), Some(carol.clone())),
        (dave.request_id.clone(), Some(dave.clone())),
    ]);
    let report = check_campaign(
        &stack,
        &api,
        &decisions,
        &cid,
        &expected,
        Duration::from_secs(30),
    )
    .await;
    assert_clean(&report);
    drop(all);
}

/// A pay or cancel sent without `wait_ms` is answered 202 with a request
/// id, like a purchase; GET /v1/requests/{request_id} then tells its
/// outcome once decided, as it does for a purchase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_answered_202_can_be_followed_at_get_requests() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("poll-{}", token(6));
    create(
        &api,
        &campaign_body(&cid, 5, json!({})),
        CampaignState::Active,
    )
    .await;
    let d = buy(&api, &cid, "eve", "k", None).await;
    let order = d.order_id.clone().expect("order");
    let r = api
        .post(
            &format!("/v1/orders/{order}/pay"),
            &json!({ "payment_ref": "psp-eve-1" }),
            &[("Authorization", &Api::payments())],
        )
        .await
        .expect("pay");
    assert_eq!(r.status, 202, "{}", r.body);
    let rid = r.body["request_id"]
        .as_str()
        .expect("request id")
        .to_owned();
    // The pay takes effect...
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let v = api.campaign(&cid).await?;
            if v.stock.paid == 1 {
                Ok(())
            } else {
                Err(format!("{:?}", v.stock))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the pay never took effect: {e}"));
    // ... and the request that made it says so.
    let last = eventually(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async {
            let g = api.get(&format!("/v1/requests/{rid}")).await?;
            if g.status == 200 && g.body["status"] != json!("pending") {
                Ok(g.body)
            } else {
                Err(format!("{} {}", g.status, g.body))
            }
        },
    )
    .await;
    match last {
        Ok(body) => assert_eq!(body["status"], json!("paid"), "{body}"),
        Err(e) => {
            panic!("GET /v1/requests/{rid} still says pending 10 s after the pay took effect: {e}")
        }
    }

    // The shared checker agrees: one unit, paid, one order.
    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        2,
        Duration::from_secs(60),
    )
    .await;
    let expected = HashMap::from([(d.request_id.clone(), Some(d.clone()))]);
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(30)).await;
    assert_clean(&report);
    drop(all);
}

// ---------------------------------------------------------------------------
// Replays of the orders topic, and fulfilment

/// After a sale with paid, cancelled and expired orders (and a lottery of
/// free prizes), replaying the whole orders topic changes no order: (a)
/// every event produced again onto the topic, in its original order, and
/// consumed by the running sink; (b) a copy of the topic consumed by a
/// fresh sink (new topic prefix, so a new consumer group) into a new
/// store, first in the original order, then again in reverse (every
/// order's final event before its `reserved`). The fulfilment topic holds
/// an event for every paid order and none other; copies share the order id
/// and say the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_orders_topic_leaves_every_order_status_unchanged() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let producer = stack.producer();

    // A sale: 10 paid, 10 cancelled, 10 expired.
    let sale = format!("sale-{}", token(6));
    create(
        &api,
        &campaign_body(&sale, 30, json!({ "payment_timeout_secs": 2 })),
        CampaignState::Active,
    )
    .await;
    let results: Vec<(usize, Decision, Option<Answer>)> = stream::iter(0..30)
        .map(|i| {
            let api = api.clone();
            let sale = sale.clone();
            async move {
                let user = format!("u{i:02}");
                let d = buy(&api, &sale, &user, "k", None).await;
                assert_eq!(d.status, DecisionStatus::Reserved, "{d:?}");
                let order = d.order_id.clone().expect("order");
                let a = match i % 3 {
                    0 => Some(order_command(&api, &order, &user, "pay", None).await),
                    1 => Some(order_command(&api, &order, &user, "cancel", None).await),
                    _ => None,
                };
                (i, d, a)
            }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    for (i, d, a) in &results {
        if let Some(a) = a {
            let want = if i % 3 == 0 { "paid" } else { "cancelled" };
            assert!(a.is_ok(want), "{d:?}: {}", a.describe());
        }
    }
    // A lottery of free prizes, straight to Kafka.
    let lot = format!("free-{}", token(6));
    create(
        &api,
        &campaign_body(
            &lot,
            40,
            json!({ "kind": "lottery", "price": 0, "win_rate": 0.5, "award_type": "virtual" }),
        ),
        CampaignState::Active,
    )
    .await;
    let draws: Vec<(String, String)> = (0..40)
        .map(|i| (new_request_id(), format!("p{i:02}")))
        .collect();
    produce_purchases(&stack, &producer, &lot, &draws).await;
    let lot_stats = wait_decided(&api, &lot, 40, Duration::from_secs(60)).await;
    let wins = decision_count(&lot_stats, "won") as usize;
    assert!(wins > 0, "no free prize won: {lot_stats}");

    // Settled: the sale's reservations all ended, every order stored.
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let v = api.campaign(&sale).await?;
            if v.stock.reserved == 0 {
                Ok(())
            } else {
                Err(format!("{:?}", v.stock))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("sale never settled: {e}"));
    let snapshot: BTreeMap<String, OrderView> = eventually(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let mut orders = all_orders(&api, &sale).await;
            let free = all_orders(&api, &lot).await;
            let settled = orders.len() == 30
                && orders.iter().all(|o| o.status != OrderStatus::Reserved)
                && free.len() == wins;
            orders.extend(free);
            if settled {
                Ok(orders)
            } else {
                Err(count_by_status(&orders))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("store never settled: {e:?}"))
    .into_iter()
    .map(|o| (o.order_id.clone(), o))
    .collect();
    let counts = count_by_status(&snapshot.values().cloned().collect::<Vec<_>>());
    eprintln!("before the replay: {counts:?}");
    assert_eq!(counts.get("paid"), Some(&(10 + wins)), "{counts:?}");
    assert_eq!(counts.get("cancelled"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("expired"), Some(&10), "{counts:?}");

    // The shared checker finds both campaigns clean before the replay...
    let sale_expected: HashMap<String, Option<Decision>> = results
        .iter()
        .map(|(_, d, _)| (d.request_id.clone(), Some(d.clone())))
        .collect();
    let lot_expected: HashMap<String, Option<Decision>> =
        draws.iter().map(|(rid, _)| (rid.clone(), None)).collect();
    let check_both = |what: &'static str| {
        let (stack, api) = (&stack, &api);
        let campaigns = [(&sale, &sale_expected), (&lot, &lot_expected)];
        async move {
            let decisions = read_decisions(
                &stack.kafka(),
                &stack.topics.orders,
                70,
                Duration::from_secs(60),
            )
            .await;
            for (cid, expected) in campaigns {
                let report = check_campaign(
                    stack,
                    api,
                    &decisions,
                    cid,
                    expected,
                    Duration::from_secs(60),
                )
                .await;
                eprintln!("{what}:");
                assert_clean(&report);
            }
        }
    };
    check_both("before the replay").await;

    let compare = |what: &str, now: &BTreeMap<String, OrderView>| {
        let mut diffs = Vec::new();
        for (id, before) in &snapshot {
            match now.get(id) {
                Some(o) if o == before => {}
                Some(o) => diffs.push(format!(
                    "{id}: {} -> {} ({before:?} -> {o:?})",
                    before.status, o.status
                )),
                None => diffs.push(format!("{id} ({}) missing", before.status)),
            }
        }
        for id in now.keys() {
            if !snapshot.contains_key(id) {
                diffs.push(format!("{id}: new order {:?}", now[id]));
            }
        }
        assert_none(what, &diffs);
    };

    let original = read_topic(&stack, &stack.topics.orders, 60, Duration::from_secs(60)).await;
    let parts: BTreeSet<i32> = original.iter().map(|m| m.partition()).collect();
    let copy: Vec<(i32, Option<Vec<u8>>, Vec<u8>)> = original
        .iter()
        .map(|m| {
            (
                m.partition(),
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
            )
        })
        .collect();
    let terminal_events = original
        .iter()
        .filter(|m| {
            matches!(
                order_event(m),
                Some(OrderEvent::Paid(_) | OrderEvent::Cancelled(_) | OrderEvent::Expired(_))
            )
        })
        .count();
    eprintln!(
        "{} events on {} ({} order transitions)",
        original.len(),
        stack.topics.orders,
        terminal_events
    );
    assert!(terminal_events >= 30, "expected transitions on the topic");

    // (a) The running sink reads the whole topic again.
    produce_exact(&producer, &stack.topics.orders, &copy).await;
    let sentinels = append_sentinels(&producer, &stack.topics.orders, &parts).await;
    for s in &sentinels {
        wait_order_status(&api, s, "reserved", Duration::from_secs(120)).await;
    }
    let mut now: BTreeMap<String, OrderView> = BTreeMap::new();
    for cid in [&sale, &lot] {
        now.extend(
            all_orders(&api, cid)
                .await
                .into_iter()
                .map(|o| (o.order_id.clone(), o)),
        );
    }
    compare(
        "orders after replaying the topic into the running sink",
        &now,
    );
    // ... and after the topic was replayed into the running sink.
    check_both("after replaying the topic into the running sink").await;

    // (b) A fresh sink, a fresh group, a fresh store.
    let prefix2 = format!("t{}", token(10));
    let store2 = stack.dir().join("replay.db");
    let store2_url = format!("sqlite://{}", store2.display());
    let env2 = [
        ("SECKILL_TOPIC_PREFIX", prefix2.as_str()),
        ("SECKILL_STORE", store2_url.as_str()),
    ];
    stack.seckill_run(&["topics", "create"], &env2, 120).await;
    let topics2 = seckill_schemas::Topics::with_prefix(&prefix2);
    let sink2 = stack.seckill(&["sink"], &env2).await;
    produce_exact(&producer, &topics2.orders, &copy).await;
    let sentinels = append_sentinels(&producer, &topics2.orders, &parts).await;
    let store = eventually(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            seckill_store::open_store(&store2_url)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("open {store2_url}: {e}"));
    let wait_sentinels = |ids: Vec<String>| {
        let store = store.clone();
        async move {
            eventually(
                Duration::from_secs(120),
                Duration::from_millis(250),
                || async {
                    for id in &ids {
                        match store.get_order(id).await {
                            Ok(Some(_)) => {}
                            Ok(None) => return Err(format!("{id} not stored yet")),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    Ok(())
                },
            )
            .await
            .unwrap_or_else(|e| panic!("the fresh sink did not get through the copy: {e}"));
        }
    };
    wait_sentinels(sentinels).await;
    let read_store2 = || async {
        let mut m = BTreeMap::new();
        for cid in [&sale, &lot] {
            m.extend(
                store_orders(store.as_ref(), cid)
                    .await
                    .into_iter()
                    .map(|o| (o.order_id.clone(), o)),
            );
        }
        m
    };
    compare(
        "orders in a fresh store fed the whole topic",
        &read_store2().await,
    );

    // ... and the whole topic again, backwards.
    let mut backwards = copy.clone();
    backwards.reverse();
    produce_exact(&producer, &topics2.orders, &backwards).await;
    let sentinels = append_sentinels(&producer, &topics2.orders, &parts).await;
    wait_sentinels(sentinels).await;
    compare(
        "orders in the fresh store after the topic again, backwards",
        &read_store2().await,
    );
    drop(sink2);

    // The fulfilment topic: every paid order, nothing else; copies agree.
    let paid: HashMap<&str, &OrderView> = snapshot
        .values()
        .filter(|o| o.status == OrderStatus::Paid)
        .map(|o| (o.order_id.as_str(), o))
        .collect();
    let ful = read_topic(
        &stack,
        &stack.topics.fulfilment,
        paid.len(),
        Duration::from_secs(60),
    )
    .await;
    let mut by_order: HashMap<String, Vec<FulfilmentRequested>> = HashMap::new();
    let mut violations = Vec::new();
    for m in &ful {
        let f: FulfilmentRequested = match serde_json::from_slice(m.payload().unwrap_or_default()) {
            Ok(f) => f,
            Err(e) => {
                violations.push(format!(
                    "unparseable fulfilment event ({e}): {}",
                    String::from_utf8_lossy(m.payload().unwrap_or_default())
                ));
                continue;
            }
        };
        if m.key() != Some(f.order_id.as_bytes()) {
            violations.push(format!(
                "fulfilment of {} keyed {:?}",
                f.order_id,
                m.key().map(|k| String::from_utf8_lossy(k).into_owned())
            ));
        }
        by_order.entry(f.order_id.clone()).or_default().push(f);
    }
    for (id, fs) in &by_order {
        let Some(o) = paid.get(id.as_str()) else {
            violations.push(format!("fulfilment for {id}, which is not a paid order"));
            continue;
        };
        let f = &fs[0];
        if f.campaign_id != o.campaign_id
            || f.user_id != o.user_id
            || f.quantity != o.quantity
            || f.price != o.price
            || f.prize_id != o.prize_id
            || f.award_type != o.award_type
        {
            violations.push(format!("fulfilment {f:?} does not match the order {o:?}"));
        }
        if fs.iter().any(|g| g != f) {
            violations.push(format!("copies of the fulfilment of {id} differ: {fs:?}"));
        }
    }
    for id in paid.keys() {
        if !by_order.contains_key(*id) {
            violations.push(format!("paid order {id} has no fulfilment event"));
        }
    }
    eprintln!(
        "{} fulfilment events for {} paid orders",
        ful.len(),
        paid.len()
    );
    assert_none("fulfilment", &violations);
    drop(all);
}

/// A rolling upgrade: results and order campaigns that processors before
/// the lookup hashes wrote as one key each (`<prefix>:decision:<id>`,
/// `<prefix>:order:<id>`) are still found by GET /v1/requests/{id} and by
/// a pay by order id; without them the request reads as pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_written_by_older_processors_stay_readable_after_an_upgrade() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("legacy-{}", token(6));
    create(
        &api,
        &campaign_body(&cid, 5, json!({})),
        CampaignState::Active,
    )
    .await;
    let d = buy(&api, &cid, "olga", "k", None).await;
    let rid = d.request_id.clone();
    let order = d.order_id.clone().expect("order");
    let before = api
        .get(&format!("/v1/requests/{rid}"))
        .await
        .expect("GET request");
    assert_eq!(before.body["status"], json!("reserved"), "{}", before.body);

    // Move both lookups from the hashes to the old per-id keys.
    let mut con = stack.redis_con().await;
    let prefix = stack.keys.lookup_ttl().replace(":lk:ttl_secs", "");
    let hashes: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:lk:[ro]:*"))
        .query_async(&mut con)
        .await
        .expect("KEYS");
    assert!(!hashes.is_empty(), "no lookup hashes under {prefix}");
    for h in &hashes {
        let _: () = con.hdel(h, &[&rid, &order]).await.expect("HDEL");
    }
    let legacy_result = format!("{prefix}:decision:{rid}");
    let gone = api.get(&format!("/v1/requests/{rid}")).await.expect("GET");
    assert_eq!(gone.body["status"], json!("pending"), "{}", gone.body);
    let _: () = con
        .set(&legacy_result, before.body.to_string())
        .await
        .expect("SET");
    let _: () = con
        .set(format!("{prefix}:order:{order}"), &cid)
        .await
        .expect("SET");

    let after = api.get(&format!("/v1/requests/{rid}")).await.expect("GET");
    assert_eq!(after.body, before.body);
    let paid = api
        .post(
            &format!("/v1/orders/{order}/pay?wait_ms=5000"),
            &json!({ "payment_ref": "psp-olga-1" }),
            &[("Authorization", &Api::payments())],
        )
        .await
        .expect("pay");
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(paid.body["status"], json!("paid"), "{}", paid.body);
    drop(all);
}
