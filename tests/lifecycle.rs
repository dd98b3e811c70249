//! End-to-end tests of issue 3: orders that are paid, cancelled or expire;
//! lotteries; the campaign lifecycle; eligibility; and a sink that applies
//! order status monotonically. Every test runs the real `seckill` binary on
//! a private redis-server + tansu (see tests/common).
//!
//! Run: `cargo test -p seckill-cli --test lifecycle -- --test-threads=2`.

#[allow(unused_imports)]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use futures::{stream, StreamExt};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use redis::AsyncCommands;
use serde_json::{json, Value};

use common::http::parse_decision;
use common::kafka::consume_topic;
use common::{eventually, purchase_json, read_decisions, token, within, Api, Producer, Stack};
use seckill_schemas::{
    draw_point, order_id_for, CampaignSpec, CampaignState, CampaignView, Decision, DecisionStatus,
    DrawStrategy, FulfilmentRequested, OrderEvent, OrderStatus, OrderView, PrizeSpec, RefusalReason,
};

// ---------------------------------------------------------------------------
// Helpers

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn sleep_ms(ms: i64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
    }
}

/// Sleeps until the wall clock reads `at_ms` (unix ms).
async fn sleep_until_ms(at_ms: i64) {
    sleep_ms(at_ms - now_ms()).await;
}

/// Fails the test with up to 20 of `violations`.
fn assert_none(what: &str, violations: &[String]) {
    if !violations.is_empty() {
        let shown: Vec<&String> = violations.iter().take(20).collect();
        panic!(
            "{what}: {} violation(s), e.g.\n  {}",
            violations.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
}

/// A sale campaign open from a minute ago for two hours, one unit per
/// user, price 19.99; `extra`'s fields override or add to it.
fn campaign_body(id: &str, stock: u64, extra: Value) -> Value {
    let now = Utc::now();
    let mut body = json!({
        "id": id,
        "name": format!("e2e campaign {id}"),
        "kind": "sale",
        "stock": stock,
        "per_user_limit": 1,
        "starts_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
        "ends_at": (now + chrono::Duration::hours(2)).to_rfc3339(),
        "payment_timeout_secs": 600,
        "price": 1999,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// Creates a campaign (retrying a 503 while the processors join their
/// group: the same definition again is safe) and waits until GET shows it
/// in `state`.
async fn create(api: &Api, body: &Value, state: CampaignState) -> CampaignView {
    let id = body["id"].as_str().expect("campaign id").to_owned();
    let mut last = String::new();
    let mut created = false;
    for attempt in 0..12 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let r = api.post_campaign(body).await;
        match r.status {
            200 | 201 => {
                created = true;
                break;
            }
            s if s >= 500 => last = format!("{s}: {}", r.body),
            s => panic!("POST /v1/campaigns {id} answered {s}: {}", r.body),
        }
    }
    assert!(created, "POST /v1/campaigns {id} kept failing: {last}");
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let v = api.campaign(&id).await?;
            if v.state == state {
                Ok(v)
            } else {
                Err(format!("state {:?}, want {state:?}: {v:?}", v.state))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("campaign {id} never reached {state:?}: {e}"))
}

/// POST /v1/purchases?wait_ms=10000 with optional attributes, retried
/// safely under one Idempotency-Key; a pending answer is followed up.
async fn buy(api: &Api, cid: &str, user: &str, key: &str, attributes: Option<&Value>) -> Decision {
    let mut body = json!({ "campaign_id": cid });
    if let Some(a) = attributes {
        body["attributes"] = a.clone();
    }
    let mut last = String::new();
    for attempt in 0..12u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
        }
        let reply = match api
            .post(
                "/v1/purchases?wait_ms=10000",
                &body,
                &[("X-User-Id", user), ("Idempotency-Key", key)],
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match reply.status {
            200 | 202 => {
                let rid = reply.body["request_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no request_id in {}", reply.body))
                    .to_owned();
                if reply.status == 200 && reply.body["status"] != "pending" {
                    return parse_decision(&reply.body);
                }
                return api.wait_decision(&rid, Duration::from_secs(60)).await;
            }
            s if s >= 500 || s == 429 => last = format!("{s}: {}", reply.body),
            s => panic!(
                "POST /v1/purchases ({cid}, {user}, key {key}) answered {s}: {}",
                reply.body
            ),
        }
    }
    panic!("POST /v1/purchases ({cid}, {user}, key {key}) kept failing: {last}");
}

/// A `purchase_requested` event with attributes, as an upstream service
/// would produce it.
fn purchase_with_attributes(rid: &str, cid: &str, user: &str, attributes: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "purchase_requested",
        "schema_version": 1,
        "request_id": rid,
        "campaign_id": cid,
        "user_id": user,
        "quantity": 1,
        "attributes": attributes,
    }))
    .expect("serialise purchase")
}

/// Produces purchases (request id, user) for `cid` straight to Kafka, in
/// this order (one key, so one partition, so decided in this order).
async fn produce_purchases(
    stack: &Stack,
    producer: &Producer,
    cid: &str,
    reqs: &[(String, String)],
) {
    let messages: Vec<(String, Vec<u8>)> = reqs
        .iter()
        .map(|(rid, user)| (cid.to_owned(), purchase_json(rid, cid, user, 1)))
        .collect();
    for chunk in messages.chunks(2000) {
        producer.send_all(&stack.topics.requests, chunk).await;
    }
}

/// The answer to a pay or cancel.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
    /// When the command was first sent, and when the final answer came
    /// (unix ms, this host's clock, which is also the Redis server's).
    sent_ms: i64,
    answered_ms: i64,
    /// Times ingest answered 404 "no order" (without a `reason`: it did not
    /// find the order's campaign, so nothing was queued) before the answer.
    early_404s: u32,
}

impl Answer {
    fn reason(&self) -> Option<&str> {
        self.body.get("reason").and_then(Value::as_str)
    }

    /// "200 paid", "409 expired", "404 not_found", ...
    fn describe(&self) -> String {
        if self.status == 200 {
            format!(
                "200 {}",
                self.body
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            )
        } else {
            format!("{} {}", self.status, self.reason().unwrap_or("(no reason)"))
        }
    }

    fn is_ok(&self, status: &str) -> bool {
        self.status == 200
            && self.body.get("status").and_then(Value::as_str) == Some(status)
            && self.body.get("accepted") == Some(&Value::Bool(true))
    }

    fn is_refused(&self, code: u16, reason: &str) -> bool {
        self.status == code && self.reason() == Some(reason)
    }
}

/// POST /v1/orders/{id}/{verb}?wait_ms=10000 as `user`. Without a key the
/// request id is derived from (user, verb, order), so re-posting after a
/// 202, a 5xx or a transport error is the same request and safe.
async fn order_command(
    api: &Api,
    order_id: &str,
    user: &str,
    verb: &str,
    key: Option<&str>,
) -> Answer {
    let path = format!("/v1/orders/{order_id}/{verb}?wait_ms=10000");
    let mut headers = vec![("X-User-Id", user)];
    if let Some(k) = key {
        headers.push(("Idempotency-Key", k));
    }
    let sent_ms = now_ms();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last;
    let mut early_404s = 0;
    loop {
        match api.post(&path, &json!({}), &headers).await {
            Ok(r) if r.status == 202 || r.status == 429 || r.status >= 500 => {
                last = format!("{}: {}", r.status, r.body)
            }
            // Ingest's own "no order" (no `reason`): it could not tell the
            // order's campaign yet. Tried again for a while, and counted.
            Ok(r) if r.status == 404 && r.body.get("reason").is_none() && early_404s < 25 => {
                early_404s += 1;
                last = format!("{}: {}", r.status, r.body)
            }
            Ok(r) => {
                if r.status != 200 {
                    assert!(
                        r.content_type.starts_with("application/problem+json"),
                        "POST {path}: {} answered as {:?}: {}",
                        r.status,
                        r.content_type,
                        r.body
                    );
                }
                return Answer {
                    status: r.status,
                    body: r.body,
                    sent_ms,
                    answered_ms: now_ms(),
                    early_404s,
                };
            }
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "POST {path} as {user} got no final answer in 90 s: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET /v1/campaigns/{id}/stats.
async fn stats(api: &Api, cid: &str) -> Value {
    let r = api
        .get(&format!("/v1/campaigns/{cid}/stats"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "GET /v1/campaigns/{cid}/stats: {}", r.body);
    r.body
}

fn decision_count(stats: &Value, status: &str) -> u64 {
    stats["decisions"][status].as_u64().unwrap_or(0)
}

fn decisions_total(stats: &Value) -> u64 {
    stats["decisions"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Waits until the processor has decided `n` purchase requests of `cid`.
async fn wait_decided(api: &Api, cid: &str, n: u64, timeout: Duration) -> Value {
    eventually(timeout, Duration::from_millis(250), || async {
        let s = stats(api, cid).await;
        if decisions_total(&s) >= n {
            Ok(s)
        } else {
            Err(s)
        }
    })
    .await
    .unwrap_or_else(|s| panic!("{cid}: fewer than {n} decisions within {timeout:?}: {s}"))
}

/// GET /v1/campaigns/{id}/users/{user}.
async fn participation(api: &Api, cid: &str, user: &str) -> Value {
    let r = api
        .get(&format!("/v1/campaigns/{cid}/users/{user}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "GET users/{user}: {}", r.body);
    r.body
}

/// Every order of a campaign in the store, page by page.
async fn all_orders(api: &Api, cid: &str) -> Vec<OrderView> {
    let mut out: Vec<OrderView> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/orders?campaign_id={cid}&limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let r = api.get(&path).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        let page: Vec<OrderView> = serde_json::from_value(r.body.clone())
            .unwrap_or_else(|e| panic!("GET {path}: not a list of orders ({e})"));
        let n = page.len();
        after = page.last().map(|o| o.order_id.clone());
        out.extend(page);
        if n < 1000 {
            return out;
        }
    }
}

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

/// One message of a topic, with where it was.
#[derive(Debug, Clone)]
struct Logged {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl Logged {
    fn event(&self) -> Option<OrderEvent> {
        serde_json::from_slice(&self.payload).ok()
    }
}

/// The whole of `topic` (at least `min` messages, then until idle for 2 s),
/// in partition and offset order.
async fn read_topic(stack: &Stack, topic: &str, min: usize, timeout: Duration) -> Vec<Logged> {
    let messages = consume_topic(&stack.kafka(), topic, min, Duration::from_secs(2), timeout).await;
    let mut out: Vec<Logged> = messages
        .iter()
        .map(|m| Logged {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
        })
        .collect();
    out.sort_by_key(|m| (m.partition, m.offset));
    out
}

/// Order id -> the distinct (status, decided_at_ms) of the paid, cancelled
/// and expired events found for it.
fn transitions(log: &[Logged]) -> HashMap<String, BTreeSet<(String, i64)>> {
    let mut out: HashMap<String, BTreeSet<(String, i64)>> = HashMap::new();
    for m in log {
        let (status, e) = match m.event() {
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

/// Produces `messages` (partition, key, payload) to exactly those
/// partitions of `topic`, keeping their order per partition.
async fn produce_exact(
    producer: &Producer,
    topic: &str,
    messages: &[(i32, Option<Vec<u8>>, Vec<u8>)],
) {
    for chunk in messages.chunks(2000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (p, key, payload) in chunk {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .partition(*p)
                .payload(payload.as_slice());
            if let Some(k) = key {
                record = record.key(k.as_slice());
            }
            pending.push(producer.inner.send(record, Duration::from_secs(60)));
        }
        for r in join_all(pending).await {
            if let Err((e, _)) = r {
                panic!("produce to {topic}: {e}");
            }
        }
    }
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
// 1. Reservations paid, cancelled and expired, with pays racing the expiry

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
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for h in &held {
        let order = h.decision.order_id.clone().expect("order id");
        let expires = h.decision.expires_at_ms.expect("deadline");
        let what = match (&h.plan, &h.answer) {
            (Plan::Leave, None) => "expired",
            (Plan::PayAndCancel, Some(pay)) => {
                // Exactly one of the two wins; the other is told who did.
                let cancel = h.rival.as_ref().expect("the cancel's answer");
                *tally
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
                *tally
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
    eprintln!("answers: {tally:?}");
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
// 2. A late pay

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

fn stock_of(v: &CampaignView) -> (u64, u64, u64, u64) {
    (
        v.stock.total,
        v.stock.available,
        v.stock.reserved,
        v.stock.paid,
    )
}

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
    drop(all);
}

/// Pay and cancel answer by the order's state and owner: 403 not_owner for
/// another user, 404 for an unknown order, 200 paid then 409 already_paid,
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

    let a = order_command(&api, &carol_order, "mallory", "pay", None).await;
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
    drop(all);
}

// ---------------------------------------------------------------------------
// 3. Lotteries

/// What a draw should give, by the rules of the issue.
#[derive(Debug, Clone, PartialEq)]
enum Sim {
    Won(String),
    Lost,
    SoldOut,
}

/// Replays draws in decision order against the prize table, with the
/// stock as it runs down. Returns the expected result of every draw, and
/// the number of draws that landed within 1e-9 of a band boundary (where
/// rounding could tip them either way).
fn simulate(table: &[PrizeSpec], strategy: DrawStrategy, points: &[f64]) -> (Vec<Sim>, usize) {
    let mut stock: Vec<u64> = table.iter().map(|p| p.stock).collect();
    let mut out = Vec::with_capacity(points.len());
    let mut close = 0;
    for &u in points {
        if stock.iter().sum::<u64>() == 0 {
            out.push(Sim::SoldOut);
            continue;
        }
        let mut bounds = Vec::new();
        let mut result = Sim::Lost;
        match strategy {
            DrawStrategy::Fixed => {
                let mut cum = 0.0;
                for (i, p) in table.iter().enumerate() {
                    cum += p.probability;
                    bounds.push(cum);
                    if u < cum {
                        if stock[i] > 0 {
                            stock[i] -= 1;
                            result = Sim::Won(p.id.clone());
                        }
                        break;
                    }
                }
            }
            DrawStrategy::Renormalize => {
                let all: f64 = table.iter().map(|p| p.probability).sum();
                let left: f64 = table
                    .iter()
                    .zip(&stock)
                    .filter(|(_, s)| **s > 0)
                    .map(|(p, _)| p.probability)
                    .sum();
                let mut cum = 0.0;
                for (i, p) in table.iter().enumerate() {
                    if stock[i] == 0 {
                        continue;
                    }
                    cum += p.probability * all / left;
                    bounds.push(cum);
                    if u < cum {
                        stock[i] -= 1;
                        result = Sim::Won(p.id.clone());
                        break;
                    }
                }
            }
        }
        if bounds.iter().any(|b| (u - b).abs() < 1e-9) {
            close += 1;
        }
        out.push(result);
    }
    (out, close)
}

fn sim_of(d: &Decision) -> Sim {
    match d.status {
        DecisionStatus::Won => Sim::Won(d.prize_id.clone().unwrap_or_default()),
        DecisionStatus::Lost => Sim::Lost,
        DecisionStatus::SoldOut => Sim::SoldOut,
        other => panic!("a lottery draw decided {other:?}: {d:?}"),
    }
}

/// Asserts `x` is within 4 standard deviations of Binomial(n, p)'s mean.
fn assert_binomial(what: &str, x: usize, n: usize, p: f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    eprintln!(
        "{what}: {x} (expected {mean:.0} +- {:.0} at 4 sd)",
        4.0 * sd
    );
    assert!(
        (x as f64 - mean).abs() <= 4.0 * sd,
        "{what}: {x} is more than 4 sd ({sd:.1}) from {mean:.1}"
    );
}

/// Lotteries, with draws produced straight to Kafka. 20,000 draws at
/// win_rate 0.2 over three prizes weighted 1:2:5 (ample stock): winners
/// within 4 sd of 4,000 and each prize within 4 sd of its share; every
/// draw is the one its (seed, request id) point gives. Two campaigns with
/// a rare prize that sells out early: under `fixed` its band becomes a
/// loss (win rate 0.2 -> 0.1), under `renormalize` the other prize takes
/// it (win rate stays 0.2); every draw matches a replay of the rules.
/// Redelivered draws (same request ids produced again, some after the sell
/// out) repeat their first result and change no counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lottery_20000_draws_match_win_rate_prize_mix_strategies_and_redelivery_repeats() {
    const N: usize = 20_000;
    const M: usize = 4_000;
    const RARE: u64 = 25;
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let producer = stack.producer();

    let mix = format!("lottery-{}", token(6));
    let mix_view = create(
        &api,
        &campaign_body(
            &mix,
            3 * N as u64,
            json!({
                "kind": "lottery",
                "price": 0,
                "win_rate": 0.2,
                "prizes": [
                    {"id": "gold", "name": "Gold coin", "stock": N, "probability": 0.1, "award_type": "virtual"},
                    {"id": "silver", "name": "Silver coupon", "stock": N, "probability": 0.2, "award_type": "coupon"},
                    {"id": "bronze", "name": "Bronze mug", "stock": N, "probability": 0.5, "award_type": "physical", "price": 500},
                ],
            }),
        ),
        CampaignState::Active,
    )
    .await;
    let lottery_body = |id: &str, strategy: &str| {
        campaign_body(
            id,
            RARE + M as u64,
            json!({
                "kind": "lottery",
                "price": 0,
                "strategy": strategy,
                "seed": format!("seed-{id}"),
                "prizes": [
                    {"id": "rare", "name": "Rare", "stock": RARE, "probability": 0.1},
                    {"id": "common", "name": "Common", "stock": M, "probability": 0.1},
                ],
            }),
        )
    };
    let fixed = format!("fixed-{}", token(6));
    let renorm = format!("renorm-{}", token(6));
    let fixed_view = create(&api, &lottery_body(&fixed, "fixed"), CampaignState::Active).await;
    let renorm_view = create(
        &api,
        &lottery_body(&renorm, "renormalize"),
        CampaignState::Active,
    )
    .await;

    let draws = |prefix: &str, n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| (new_request_id(), format!("{prefix}-{i:05}")))
            .collect()
    };
    let mix_draws = draws("player", N);
    let fixed_draws = draws("f", M);
    let renorm_draws = draws("r", M);
    let started = Instant::now();
    produce_purchases(&stack, &producer, &fixed, &fixed_draws).await;
    produce_purchases(&stack, &producer, &renorm, &renorm_draws).await;
    produce_purchases(&stack, &producer, &mix, &mix_draws).await;
    let mix_stats = wait_decided(&api, &mix, N as u64, Duration::from_secs(600)).await;
    let fixed_stats = wait_decided(&api, &fixed, M as u64, Duration::from_secs(300)).await;
    let renorm_stats = wait_decided(&api, &renorm, M as u64, Duration::from_secs(300)).await;
    eprintln!("{} draws decided in {:?}", N + 2 * M, started.elapsed());

    // Redeliver: 1,000 of the mix, and the first 300 of each strategy
    // campaign (drawn before the rare prize sold out, redelivered after).
    let mut redelivered: Vec<(String, String, String)> = Vec::new(); // (cid, rid, user)
    for (cid, list, n) in [
        (&mix, &mix_draws, 1000),
        (&fixed, &fixed_draws, 300),
        (&renorm, &renorm_draws, 300),
    ] {
        for (rid, user) in list.iter().step_by((list.len() / n).max(1)).take(n) {
            redelivered.push((cid.clone(), rid.clone(), user.clone()));
        }
    }
    let mut again: Vec<(String, Vec<u8>)> = redelivered
        .iter()
        .map(|(cid, rid, user)| (cid.clone(), purchase_json(rid, cid, user, 1)))
        .collect();
    // A fresh draw after them in each campaign: once it is decided, so are
    // the redeliveries before it.
    let marks: Vec<(String, String)> = [&mix, &fixed, &renorm]
        .iter()
        .map(|cid| ((*cid).clone(), new_request_id()))
        .collect();
    for (cid, rid) in &marks {
        again.push((cid.clone(), purchase_json(rid, cid, "marker", 1)));
    }
    producer.send_all(&stack.topics.requests, &again).await;
    let mut marker: HashMap<String, Decision> = HashMap::new();
    for (cid, rid) in &marks {
        marker.insert(
            cid.clone(),
            api.wait_decision(rid, Duration::from_secs(120)).await,
        );
    }

    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        N + 2 * M + redelivered.len(),
        Duration::from_secs(300),
    )
    .await;
    assert!(
        log.unparsed.is_empty(),
        "unparseable events: {:?}",
        &log.unparsed[..log.unparsed.len().min(3)]
    );

    // Redelivered draws repeat their result.
    let mut violations = Vec::new();
    for (cid, rid, _) in &redelivered {
        let ds = log.by_request.get(rid).cloned().unwrap_or_default();
        if ds.len() < 2 {
            violations.push(format!(
                "{cid} {rid}: {} decision events after redelivery",
                ds.len()
            ));
        } else if ds.iter().any(|d| d != &ds[0]) {
            violations.push(format!("{cid} {rid}: decisions differ: {ds:?}"));
        }
    }
    assert_none("redelivered draws", &violations);
    for (cid, before) in [
        (&mix, &mix_stats),
        (&fixed, &fixed_stats),
        (&renorm, &renorm_stats),
    ] {
        let after = stats(&api, cid).await;
        assert_eq!(
            decisions_total(&after),
            decisions_total(before) + 1,
            "{cid}: redeliveries were counted as new draws: {before} -> {after}"
        );
    }

    // Every draw is the one the rules give for its point.
    let check = |view: &CampaignView, list: &[(String, String)]| -> (Vec<Sim>, Vec<String>) {
        let spec: &CampaignSpec = &view.definition;
        let seed = spec.seed.clone().unwrap_or_else(|| spec.id.clone());
        let points: Vec<f64> = list.iter().map(|(rid, _)| draw_point(&seed, rid)).collect();
        let (want, close) = simulate(
            &spec.draw_table(),
            spec.strategy.unwrap_or_default(),
            &points,
        );
        let mut got = Vec::with_capacity(list.len());
        let mut bad = Vec::new();
        for (i, (rid, user)) in list.iter().enumerate() {
            let d = log
                .first(rid)
                .unwrap_or_else(|| panic!("{}: no decision for draw {i} ({rid})", spec.id));
            assert_eq!(&d.user_id, user);
            let s = sim_of(d);
            if s != want[i] && close == 0 {
                bad.push(format!(
                    "{} draw {i} ({rid}, u={}): got {s:?}, expected {:?}",
                    spec.id, points[i], want[i]
                ));
            }
            got.push(s);
        }
        if close > 0 {
            eprintln!(
                "{}: {close} draws on a band boundary; exact comparison skipped",
                spec.id
            );
        }
        (got, bad)
    };

    // The mix: overall rate and each prize's share.
    let (got, bad) = check(&mix_view, &mix_draws);
    assert_none("mix draws vs their points", &bad);
    let table = mix_view.definition.draw_table();
    let won = |id: &str| {
        got.iter()
            .filter(|s| **s == Sim::Won(id.to_owned()))
            .count()
    };
    let winners = got.iter().filter(|s| matches!(s, Sim::Won(_))).count();
    assert_binomial("winners of 20,000 draws at 0.2", winners, N, 0.2);
    for p in &table {
        assert_binomial(&format!("prize {}", p.id), won(&p.id), N, p.probability);
    }
    assert!(
        got.iter().all(|s| *s != Sim::SoldOut),
        "sold out with ample stock"
    );
    // The stock, with the marker draw's prize (if any) counted too.
    let marker_prize = marker[&mix].prize_id.clone();
    let won_all = |id: &str| won(id) + usize::from(marker_prize.as_deref() == Some(id));
    let v = api.campaign(&mix).await.expect("view");
    let free = won_all("gold") + won_all("silver");
    let priced = won_all("bronze");
    assert_eq!(
        v.stock.paid, free as u64,
        "free prizes are confirmed at once: {:?}",
        v.stock
    );
    assert_eq!(
        v.stock.reserved, priced as u64,
        "priced prizes await payment: {:?}",
        v.stock
    );
    assert_eq!(
        v.stock.available,
        v.stock.total - (free + priced) as u64,
        "{:?}",
        v.stock
    );
    for p in &v.prizes {
        assert_eq!(p.available, p.total - won_all(&p.id) as u64, "prize {p:?}");
    }
    let st = stats(&api, &mix).await;
    assert_eq!(
        decision_count(&st, "won") + decision_count(&st, "lost"),
        N as u64 + 1,
        "{st}"
    );
    // The store: one order per win, free ones paid, priced ones reserved.
    let orders = eventually(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let o = all_orders(&api, &mix).await;
            if o.len() >= free + priced {
                Ok(o)
            } else {
                Err(o.len())
            }
        },
    )
    .await
    .unwrap_or_else(|n| panic!("{n} orders in the store, {} wins", free + priced));
    assert_eq!(orders.len(), free + priced, "one order per win");
    let winner_of: HashMap<String, &str> = mix_draws
        .iter()
        .zip(&got)
        .filter_map(|((rid, _), s)| match s {
            Sim::Won(p) => Some((order_id_for(rid), p.as_str())),
            _ => None,
        })
        .collect();
    let mut violations = Vec::new();
    for o in &orders {
        if o.user_id == "marker" {
            assert_eq!(o.prize_id, marker_prize, "{o:?}");
            continue;
        }
        let Some(prize) = winner_of.get(&o.order_id) else {
            violations.push(format!("order {} for no win", o.order_id));
            continue;
        };
        let spec = table.iter().find(|p| p.id == *prize).expect("prize");
        let want_status = if spec.price == Some(0) {
            "paid"
        } else {
            "reserved"
        };
        if o.prize_id.as_deref() != Some(prize)
            || o.status.as_str() != want_status
            || o.item_name != spec.name
            || o.award_type != spec.award_type
        {
            violations.push(format!("order {o:?} for prize {prize} ({want_status})"));
        }
    }
    assert_none("lottery orders in the store", &violations);

    // fixed vs renormalize after the rare prize sells out.
    let mut rates = Vec::new();
    for (view, list) in [(&fixed_view, &fixed_draws), (&renorm_view, &renorm_draws)] {
        let (got, bad) = check(view, list);
        assert_none(&format!("{} draws vs the rules", view.id), &bad);
        let rare_won: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == Sim::Won("rare".into()))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            rare_won.len() as u64,
            RARE,
            "{}: the rare prize sells out",
            view.id
        );
        let sold_out_at = rare_won[rare_won.len() - 1] + 1;
        assert!(
            sold_out_at < M / 4,
            "{}: rare sold out only at draw {sold_out_at}",
            view.id
        );
        let after = &got[sold_out_at..];
        let wins_after = after.iter().filter(|s| matches!(s, Sim::Won(_))).count();
        assert!(after
            .iter()
            .all(|s| *s != Sim::Won("rare".into()) && *s != Sim::SoldOut));
        let v = api.campaign(&view.id).await.expect("view");
        let rare = v
            .prizes
            .iter()
            .find(|p| p.id == "rare")
            .expect("rare prize");
        assert_eq!(rare.available, 0, "{rare:?}");
        rates.push((view.id.clone(), after.len(), wins_after));
    }
    let (_, n_fixed, w_fixed) = rates[0].clone();
    let (_, n_renorm, w_renorm) = rates[1].clone();
    assert_binomial(
        "fixed: wins after the sell-out (rate 0.1)",
        w_fixed,
        n_fixed,
        0.1,
    );
    assert_binomial(
        "renormalize: wins after the sell-out (rate 0.2)",
        w_renorm,
        n_renorm,
        0.2,
    );
    drop(all);
}

// ---------------------------------------------------------------------------
// 4. Lifecycle

/// Buys over HTTP and produces a purchase to Kafka; returns both decisions.
async fn both_paths(
    api: &Api,
    stack: &Stack,
    producer: &Producer,
    cid: &str,
    user: &str,
) -> (Decision, Decision) {
    let http = buy(
        api,
        cid,
        &format!("{user}-http"),
        &format!("{user}-{}", token(6)),
        None,
    )
    .await;
    let rid = new_request_id();
    producer
        .send(
            &stack.topics.requests,
            Some(cid),
            &purchase_json(&rid, cid, &format!("{user}-kafka"), 1),
        )
        .await;
    let kafka = api.wait_decision(&rid, Duration::from_secs(60)).await;
    (http, kafka)
}

fn assert_refused(d: &Decision, status: DecisionStatus, reason: &str, what: &str) {
    assert_eq!(d.status, status, "{what}: {d:?}");
    assert_eq!(d.reason.map(|r| r.as_str()), Some(reason), "{what}: {d:?}");
    assert!(d.order_id.is_none(), "{what}: {d:?}");
}

/// Requests before starts_at are refused `not_started`, after ends_at
/// `ended`, after a close `closed`, on a draft `draft` until it is
/// published, over HTTP and from Kafka alike; stock added mid-sale is sold
/// and no more; reset is off by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_window_close_draft_and_stock_added_mid_sale() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let producer = stack.producer();
    let na = DecisionStatus::NotActive;

    // Stock added mid-sale: 5 sold, 3 added, 10 more buyers get exactly 3.
    let more = format!("more-{}", token(6));
    create(
        &api,
        &campaign_body(&more, 5, json!({})),
        CampaignState::Active,
    )
    .await;
    for i in 0..5 {
        let d = buy(&api, &more, &format!("first-{i}"), "k", None).await;
        assert_eq!(d.status, DecisionStatus::Reserved, "{d:?}");
    }
    let sixth = buy(&api, &more, "first-5", "k", None).await;
    assert_eq!(sixth.status, DecisionStatus::SoldOut, "{sixth:?}");
    let r = api
        .post(
            &format!("/v1/campaigns/{more}/stock"),
            &json!({ "quantity": 3 }),
            &[],
        )
        .await
        .expect("add stock");
    assert_eq!(r.status, 200, "add stock: {}", r.body);
    let v: CampaignView = serde_json::from_value(r.body.clone()).expect("view");
    assert_eq!(stock_of(&v), (8, 3, 5, 0), "{:?}", v.stock);
    let second: Vec<(String, String)> = (0..10)
        .map(|i| (new_request_id(), format!("second-{i}")))
        .collect();
    produce_purchases(&stack, &producer, &more, &second).await;
    let mut outcome: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (rid, _) in &second {
        let d = api.wait_decision(rid, Duration::from_secs(60)).await;
        *outcome.entry(d.status.as_str()).or_default() += 1;
    }
    assert_eq!(
        outcome,
        BTreeMap::from([("reserved", 3), ("sold_out", 7)]),
        "after adding 3"
    );
    assert_eq!(
        stock_of(&api.campaign(&more).await.expect("view")),
        (8, 0, 8, 0)
    );
    let late = buy(&api, &more, "third", "k", None).await;
    assert_eq!(late.status, DecisionStatus::SoldOut, "{late:?}");
    let orders = api.wait_orders(&more, 8, Duration::from_secs(30)).await;
    assert_eq!(orders.len(), 8, "{orders:?}");

    // Close.
    let shut = format!("shut-{}", token(6));
    create(
        &api,
        &campaign_body(&shut, 10, json!({})),
        CampaignState::Active,
    )
    .await;
    let d = buy(&api, &shut, "early", "k", None).await;
    assert_eq!(d.status, DecisionStatus::Reserved, "{d:?}");
    let r = api
        .post(&format!("/v1/campaigns/{shut}/close"), &json!({}), &[])
        .await
        .expect("close");
    assert_eq!(r.status, 200, "close: {}", r.body);
    assert_eq!(r.body["state"], json!("closed"), "{}", r.body);
    tokio::time::sleep(Duration::from_millis(300)).await; // past the fast-path cache
    let (http, kafka) = both_paths(&api, &stack, &producer, &shut, "after-close").await;
    assert_refused(&http, na, "closed", "HTTP after close");
    assert_refused(&kafka, na, "closed", "Kafka after close");

    // Draft until published.
    let draft = format!("draft-{}", token(6));
    create(
        &api,
        &campaign_body(&draft, 10, json!({ "draft": true })),
        CampaignState::Draft,
    )
    .await;
    let (http, kafka) = both_paths(&api, &stack, &producer, &draft, "on-draft").await;
    assert_refused(&http, na, "draft", "HTTP on a draft");
    assert_refused(&kafka, na, "draft", "Kafka on a draft");
    let r = api
        .post(&format!("/v1/campaigns/{draft}/publish"), &json!({}), &[])
        .await
        .expect("publish");
    assert_eq!(r.status, 200, "publish: {}", r.body);
    assert_eq!(r.body["state"], json!("active"), "{}", r.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (http, kafka) = both_paths(&api, &stack, &producer, &draft, "published").await;
    assert_eq!(http.status, DecisionStatus::Reserved, "{http:?}");
    assert_eq!(kafka.status, DecisionStatus::Reserved, "{kafka:?}");

    // Reset is off unless enabled.
    let r = api
        .post(&format!("/v1/campaigns/{draft}/reset"), &json!({}), &[])
        .await
        .expect("reset");
    assert_eq!(
        r.status, 403,
        "reset without SECKILL_ENABLE_RESET: {}",
        r.body
    );
    assert_eq!(
        stock_of(&api.campaign(&draft).await.expect("view")),
        (10, 8, 2, 0)
    );

    // The window: opens in 6 s, closes 5 s later.
    let timed = format!("timed-{}", token(6));
    let now = Utc::now();
    let starts = now + chrono::Duration::seconds(6);
    let ends = starts + chrono::Duration::seconds(5);
    create(
        &api,
        &campaign_body(
            &timed,
            10,
            json!({ "starts_at": starts.to_rfc3339(), "ends_at": ends.to_rfc3339() }),
        ),
        CampaignState::Scheduled,
    )
    .await;
    let (starts_ms, ends_ms) = (starts.timestamp_millis(), ends.timestamp_millis());
    assert!(
        now_ms() < starts_ms - 2000,
        "creating the campaign took too long for this test"
    );
    let (http, kafka) = both_paths(&api, &stack, &producer, &timed, "too-early").await;
    assert!(
        now_ms() < starts_ms,
        "the requests before the start took too long"
    );
    assert_refused(&http, na, "not_started", "HTTP before starts_at");
    assert_refused(&kafka, na, "not_started", "Kafka before starts_at");
    sleep_until_ms(starts_ms + 1200).await;
    assert_eq!(
        api.campaign(&timed).await.expect("view").state,
        CampaignState::Active
    );
    let (http, kafka) = both_paths(&api, &stack, &producer, &timed, "in-time").await;
    assert!(
        now_ms() < ends_ms,
        "the requests in the window took too long"
    );
    assert_eq!(http.status, DecisionStatus::Reserved, "{http:?}");
    assert_eq!(kafka.status, DecisionStatus::Reserved, "{kafka:?}");
    sleep_until_ms(ends_ms + 1200).await;
    assert_eq!(
        api.campaign(&timed).await.expect("view").state,
        CampaignState::Closed
    );
    let (http, kafka) = both_paths(&api, &stack, &producer, &timed, "too-late").await;
    assert_refused(&http, na, "ended", "HTTP after ends_at");
    assert_refused(&kafka, na, "ended", "Kafka after ends_at");
    assert_eq!(
        stock_of(&api.campaign(&timed).await.expect("view")),
        (10, 8, 2, 0)
    );
    drop(all);
}

// ---------------------------------------------------------------------------
// 5. Eligibility

/// A rule tree (all of: age >= 18; any of region in [eu, uk] or tag vip;
/// not tag banned) decides who may buy, with the same answers over HTTP
/// (ingest's fast path, then the processor) and for events produced
/// straight to Kafka (the processor): eligible users are reserved, the
/// others refused `not_eligible`; a missing attribute makes a comparison
/// false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_rule_tree_gives_the_same_answers_over_http_and_kafka() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let producer = stack.producer();
    let cid = format!("elig-{}", token(6));
    let rule = json!({
        "all": [
            {"attr": "age", "op": ">=", "value": 18},
            {"any": [
                {"attr": "region", "op": "in", "value": ["eu", "uk"]},
                {"attr": "tags", "op": "=", "value": "vip"}
            ]},
            {"not": {"attr": "tags", "op": "in", "value": ["banned"]}}
        ]
    });
    let v = create(
        &api,
        &campaign_body(&cid, 100, json!({ "eligibility": rule })),
        CampaignState::Active,
    )
    .await;
    assert!(v.definition.eligibility.is_some(), "{v:?}");

    let cases: Vec<(&str, Option<Value>, bool)> = vec![
        (
            "adult-eu",
            Some(json!({"age": 30, "region": "eu", "tags": []})),
            true,
        ),
        (
            "just-18-vip-us",
            Some(json!({"age": 18, "region": "us", "tags": ["x", "vip"]})),
            true,
        ),
        ("uk-no-tags", Some(json!({"age": 20, "region": "uk"})), true),
        ("minor-eu", Some(json!({"age": 17, "region": "eu"})), false),
        (
            "adult-us",
            Some(json!({"age": 40, "region": "us", "tags": ["x"]})),
            false,
        ),
        (
            "banned-vip-eu",
            Some(json!({"age": 40, "region": "eu", "tags": ["vip", "banned"]})),
            false,
        ),
        ("no-age", Some(json!({"region": "eu"})), false),
        ("no-attributes", None, false),
    ];
    let mut violations = Vec::new();
    let mut kafka_rids = Vec::new();
    for (name, attrs, _) in &cases {
        let rid = new_request_id();
        let user = format!("{name}-kafka");
        let payload = match attrs {
            Some(a) => purchase_with_attributes(&rid, &cid, &user, a),
            None => purchase_json(&rid, &cid, &user, 1),
        };
        producer
            .send(&stack.topics.requests, Some(&cid), &payload)
            .await;
        kafka_rids.push(rid);
    }
    for ((name, attrs, eligible), rid) in cases.iter().zip(&kafka_rids) {
        let http = buy(&api, &cid, &format!("{name}-http"), "k", attrs.as_ref()).await;
        let kafka = api.wait_decision(rid, Duration::from_secs(60)).await;
        for (path, d) in [("HTTP", &http), ("Kafka", &kafka)] {
            let ok = if *eligible {
                d.status == DecisionStatus::Reserved
            } else {
                d.status == DecisionStatus::NotEligible
                    && d.reason == Some(RefusalReason::NotEligible)
                    && d.order_id.is_none()
            };
            if !ok {
                violations.push(format!(
                    "{name} ({attrs:?}) over {path}: {:?} ({:?}), expected {}",
                    d.status,
                    d.reason,
                    if *eligible {
                        "reserved"
                    } else {
                        "not_eligible"
                    }
                ));
            }
        }
        for path in ["http", "kafka"] {
            let p = participation(&api, &cid, &format!("{name}-{path}")).await;
            if p["bought"] != json!(*eligible) {
                violations.push(format!("{name}-{path}: participation {p}"));
            }
        }
    }
    assert_none("eligibility", &violations);
    let eligible = cases.iter().filter(|c| c.2).count() as u64;
    let v = api.campaign(&cid).await.expect("view");
    assert_eq!(v.stock.reserved, 2 * eligible, "{:?}", v.stock);
    let st = stats(&api, &cid).await;
    assert_eq!(decision_count(&st, "reserved"), 2 * eligible, "{st}");
    assert_eq!(
        decision_count(&st, "not_eligible"),
        cases.len() as u64 - eligible,
        "the processor refused each ineligible Kafka request: {st}"
    );
    drop(all);
}

// ---------------------------------------------------------------------------
// 6. Sink monotonicity

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
    let parts: BTreeSet<i32> = original.iter().map(|m| m.partition).collect();
    let copy: Vec<(i32, Option<Vec<u8>>, Vec<u8>)> = original
        .iter()
        .map(|m| (m.partition, m.key.clone(), m.payload.clone()))
        .collect();
    let terminal_events = original
        .iter()
        .filter(|m| {
            matches!(
                m.event(),
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
        let f: FulfilmentRequested = match serde_json::from_slice(&m.payload) {
            Ok(f) => f,
            Err(e) => {
                violations.push(format!(
                    "unparseable fulfilment event ({e}): {}",
                    String::from_utf8_lossy(&m.payload)
                ));
                continue;
            }
        };
        if m.key.as_deref() != Some(f.order_id.as_bytes()) {
            violations.push(format!(
                "fulfilment of {} keyed {:?}",
                f.order_id,
                m.key
                    .as_ref()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
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

// ---------------------------------------------------------------------------
// 7. The endpoints around it

/// GET /v1/campaigns/{id}/users/{user} and /stats report what users hold
/// now: a user whose reservation was cancelled holds nothing and is not
/// counted in `users_holding`; lottery draws are counted as attempts, and
/// `max_attempts_per_user` refuses the next draw; GET /v1/stats counts the
/// campaigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participation_and_stats_endpoints_report_current_holdings_and_attempts() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("who-{}", token(6));
    create(
        &api,
        &campaign_body(&cid, 5, json!({})),
        CampaignState::Active,
    )
    .await;
    let a = buy(&api, &cid, "ann", "k", None).await;
    let b = buy(&api, &cid, "ben", "k", None).await;
    assert_eq!(
        (a.status, b.status),
        (DecisionStatus::Reserved, DecisionStatus::Reserved)
    );
    let c = order_command(
        &api,
        b.order_id.as_deref().expect("order"),
        "ben",
        "cancel",
        None,
    )
    .await;
    assert!(c.is_ok("cancelled"), "{}", c.body);

    let ann = participation(&api, &cid, "ann").await;
    assert_eq!(
        (ann["bought"].clone(), ann["units"].clone()),
        (json!(true), json!(1)),
        "{ann}"
    );
    let ben = participation(&api, &cid, "ben").await;
    assert_eq!(
        (ben["bought"].clone(), ben["units"].clone()),
        (json!(false), json!(0)),
        "{ben}"
    );
    let nobody = participation(&api, &cid, "nobody").await;
    assert_eq!(nobody["bought"], json!(false), "{nobody}");

    let st = stats(&api, &cid).await;
    assert_eq!(st["state"], json!("active"), "{st}");
    assert_eq!(decision_count(&st, "reserved"), 2, "{st}");
    assert_eq!(
        st["stock"],
        json!({"total": 5, "available": 4, "reserved": 1, "paid": 0}),
        "{st}"
    );
    assert_eq!(st["orders_awaiting_payment"], json!(1), "{st}");

    // A lottery with two draws per user.
    let lot = format!("tries-{}", token(6));
    create(
        &api,
        &campaign_body(
            &lot,
            10,
            json!({ "kind": "lottery", "price": 0, "win_rate": 0.0, "max_attempts_per_user": 2 }),
        ),
        CampaignState::Active,
    )
    .await;
    let mut got = Vec::new();
    for i in 0..3 {
        let d = buy(&api, &lot, "gambler", &format!("draw-{i}"), None).await;
        got.push((d.status, d.reason));
    }
    assert_eq!(
        got,
        vec![
            (DecisionStatus::Lost, Some(RefusalReason::Lost)),
            (DecisionStatus::Lost, Some(RefusalReason::Lost)),
            (
                DecisionStatus::LimitExceeded,
                Some(RefusalReason::MaxAttempts)
            ),
        ]
    );
    let g = participation(&api, &lot, "gambler").await;
    assert_eq!(
        (g["attempts"].clone(), g["bought"].clone()),
        (json!(2), json!(false)),
        "{g}"
    );

    let sys = api.get("/v1/stats").await.expect("GET /v1/stats");
    assert_eq!(sys.status, 200, "{}", sys.body);
    assert!(
        sys.body["campaigns"].as_u64().unwrap_or(0) >= 2,
        "{}",
        sys.body
    );
    assert_eq!(
        st["users_holding"],
        json!(1),
        "only ann holds a unit; ben's reservation was cancelled: {st}"
    );
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
            &json!({}),
            &[("X-User-Id", "eve")],
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
    drop(all);
}

/// With SECKILL_ENABLE_RESET=true, a reset puts every unit back, empties
/// the campaign's orders and decision counts, and forgets the decisions:
/// whatever a purchase retried afterwards with a pre-reset Idempotency-Key
/// is answered, the answer agrees with the stock (a `reserved` answer
/// holds a unit and has an order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_when_enabled_returns_every_unit_and_forgets_decisions() {
    let stack = Stack::start().await;
    let all = stack
        .seckill(&["all"], &[("SECKILL_ENABLE_RESET", "true")])
        .await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("reset-{}", token(6));
    create(
        &api,
        &campaign_body(&cid, 5, json!({})),
        CampaignState::Active,
    )
    .await;
    let a = buy(&api, &cid, "amy", "amy-key", None).await;
    let b = buy(&api, &cid, "bob", "bob-key", None).await;
    let paid = order_command(
        &api,
        a.order_id.as_deref().expect("order"),
        "amy",
        "pay",
        None,
    )
    .await;
    assert!(paid.is_ok("paid"), "{}", paid.body);
    assert_eq!(b.status, DecisionStatus::Reserved);
    api.wait_orders(&cid, 2, Duration::from_secs(30)).await;

    let r = api
        .post(&format!("/v1/campaigns/{cid}/reset"), &json!({}), &[])
        .await
        .expect("reset");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        stock_of(&api.campaign(&cid).await.expect("view")),
        (5, 5, 0, 0)
    );
    let st = stats(&api, &cid).await;
    assert_eq!(decisions_total(&st), 0, "{st}");
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let o = all_orders(&api, &cid).await;
            if o.is_empty() {
                Ok(())
            } else {
                Err(o.len())
            }
        },
    )
    .await
    .unwrap_or_else(|n| panic!("{n} orders left in the store after the reset"));

    // amy retries her purchase with her old key.
    let again = buy(&api, &cid, "amy", "amy-key", None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = api.campaign(&cid).await.expect("view");
    let amy = participation(&api, &cid, "amy").await;
    if again.status == DecisionStatus::Reserved {
        let order = again.order_id.clone().expect("order");
        let stored = eventually(
            Duration::from_secs(10),
            Duration::from_millis(200),
            || async {
                let r = api.get(&format!("/v1/orders/{order}")).await?;
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(format!("{} {}", r.status, r.body))
                }
            },
        )
        .await;
        assert!(
            v.stock.reserved == 1 && amy["units"] == json!(1) && stored.is_ok(),
            "after the reset, amy's retried purchase was answered reserved ({again:?}) but \
             nothing is reserved: stock {:?}, participation {amy}, order in store: {stored:?}",
            v.stock
        );
    } else {
        assert_eq!(stock_of(&v), (5, 5, 0, 0), "{again:?}");
    }
    drop(all);
}
