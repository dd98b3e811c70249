//! The edges around a sale: the test harness itself, one request delivered
//! many times (idempotency), a campaign's window, close and draft states,
//! and reset.
//!
//! | guarantee | test |
//! | --- | --- |
//! | the harness starts and stops its services, also when a test panics | `harness_starts_redis_and_tansu_and_stops_them_on_drop`, `harness_kills_services_when_a_test_panics` |
//! | one request delivered many times (HTTP retries, Kafka redelivery) gives one decision and one order | `same_request_delivered_many_times_gives_one_decision_and_one_order` |
//! | purchases outside the window, after a close or on a draft are refused, over HTTP and Kafka alike; reset is off by default | `window_close_and_draft_refuse_purchases_over_http_and_kafka_and_reset_is_off_by_default` |
//! | a close in the middle of a sale refuses every later purchase and leaves the campaign consistent | `campaign_closed_mid_sale_refuses_every_later_purchase_and_invariants_hold` |
//! | reset, when enabled, returns every unit and forgets decisions | `reset_when_enabled_returns_every_unit_and_forgets_decisions` |
//!
//! Every test runs the real `seckill` binary on a private redis-server and
//! tansu broker (see tests/common).
//!
//! Run: `cargo test -p seckill-cli --test edge -- --test-threads=1`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use futures::{stream, StreamExt};
use redis::AsyncCommands;
use serde_json::json;

use common::kafka::partition_count;
use common::sale::{
    all_orders, buy, campaign_body, create, decisions_total, order_command, participation,
    sleep_until_ms, stats, stock_of,
};
use common::{
    assert_clean, assert_none, check_campaign, consume_topic, eventually, new_request_id,
    pid_alive, purchase_json, read_decisions, token, within, Api, CampaignArgs, Producer, Stack,
};
use seckill_schemas::{now_ms, order_id_for, CampaignState, Decision, DecisionStatus};

// ---------------------------------------------------------------------------
// The harness itself

/// The harness starts redis-server and tansu on free ports, both answer,
/// a topic can be created, written and read back from the beginning, and
/// dropping the stack leaves no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_starts_redis_and_tansu_and_stops_them_on_drop() {
    let stack = within(120, "start the stack", Stack::start()).await;
    let pids = [stack.redis.pid(), stack.tansu.pid()];

    let mut con = stack.redis_con().await;
    let key = format!("{}:probe", stack.key_prefix);
    let _: () = con.set(&key, "ok").await.expect("SET");
    let back: String = con.get(&key).await.expect("GET");
    assert_eq!(back, "ok");

    let kafka = stack.kafka();
    within(
        60,
        "create topics",
        seckill_kafka::ensure_topics(
            &kafka,
            &stack.topics,
            &seckill_kafka::TopicSettings {
                partitions: 3,
                ..Default::default()
            },
            3,
        ),
    )
    .await
    .expect("create topics on tansu");
    assert_eq!(partition_count(&kafka, &stack.topics.requests).await, Ok(3));
    assert_eq!(
        partition_count(&kafka, &stack.topics.requests_dlq).await,
        Ok(1)
    );

    let producer = stack.producer();
    let sent: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            (
                format!("key-{}", i % 7),
                format!("message {i}").into_bytes(),
            )
        })
        .collect();
    within(
        60,
        "produce",
        producer.send_all(&stack.topics.requests, &sent),
    )
    .await;
    let got = consume_topic(
        &kafka,
        &stack.topics.requests,
        sent.len(),
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await;
    let got: HashSet<Vec<u8>> = got
        .iter()
        .map(|m| rdkafka::Message::payload(m).unwrap_or_default().to_vec())
        .collect();
    let want: HashSet<Vec<u8>> = sent.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(got, want, "read back what was produced");

    drop(producer);
    drop(stack);
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} survived the stack");
    }
}

/// A test that panics still kills its services (and keeps its files for
/// the post-mortem).
#[test]
fn harness_kills_services_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let stack = Stack::start().await;
            tx.send((
                [stack.redis.pid(), stack.tansu.pid()],
                stack.dir().to_path_buf(),
            ))
            .expect("send pids");
            panic!("deliberate panic with a running stack");
        })
    })
    .join();
    assert!(outcome.is_err(), "the thread was meant to panic");
    let (pids, dir) = rx.recv().expect("pids");
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} survived a panicking test");
    }
    assert!(dir.is_dir(), "a failed test's files are kept");
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------
// Redelivery

/// One request delivered many times gives one decision and one order: HTTP
/// retries with one Idempotency-Key (sequential and concurrent), and the
/// same event produced five times straight to Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_request_delivered_many_times_gives_one_decision_and_one_order() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("redeliver-{}", token(6));
    api.create_campaign(&CampaignArgs::new(&cid, 10, 1)).await;

    // HTTP: 10 sequential retries, then 10 concurrent ones, one key.
    let alice = "alice";
    let key = format!("checkout-{}", token(8));
    let mut http_decisions = Vec::new();
    for _ in 0..10 {
        http_decisions.push(api.purchase_decided(&cid, alice, &key, None).await);
    }
    let concurrent =
        futures::future::join_all((0..10).map(|_| api.purchase_decided(&cid, alice, &key, None)))
            .await;
    http_decisions.extend(concurrent);
    let first = http_decisions[0].clone();
    assert_eq!(first.status, DecisionStatus::Reserved, "{first:?}");
    for d in &http_decisions {
        assert_eq!(d.request_id, first.request_id, "one request id for one key");
        assert_eq!(d, &first, "one decision for one request id");
    }
    let polled = api
        .wait_decision(&first.request_id, Duration::from_secs(30))
        .await;
    assert_eq!(polled.status, first.status);
    assert_eq!(polled.order_id, first.order_id);

    // Kafka: the same event five times.
    let bob_rid = new_request_id();
    let producer = stack.producer();
    let payload = purchase_json(&bob_rid, &cid, "bob", 1);
    for _ in 0..5 {
        producer
            .send(&stack.topics.requests, Some(&cid), &payload)
            .await;
    }
    let bob = api.wait_decision(&bob_rid, Duration::from_secs(60)).await;
    assert_eq!(bob.status, DecisionStatus::Reserved, "{bob:?}");
    assert_eq!(
        bob.order_id.as_deref(),
        Some(order_id_for(&bob_rid).as_str())
    );

    // The orders topic: every decision event of a request is the same.
    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        3,
        Duration::from_secs(60),
    )
    .await;
    for rid in [&first.request_id, &bob_rid] {
        let events = log
            .by_request
            .get(rid.as_str())
            .cloned()
            .unwrap_or_default();
        assert!(!events.is_empty(), "no decision event for {rid}");
        let distinct: Vec<&Decision> = events.iter().fold(Vec::new(), |mut acc, d| {
            if !acc.contains(&d) {
                acc.push(d);
            }
            acc
        });
        eprintln!(
            "{rid}: {} decision events, {} distinct",
            events.len(),
            distinct.len()
        );
        assert_eq!(
            distinct.len(),
            1,
            "decision events of {rid} differ: {distinct:?}"
        );
    }

    // The store: one order each, also after a while.
    let orders = api.wait_orders(&cid, 2, Duration::from_secs(60)).await;
    assert_eq!(orders.len(), 2, "{orders:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (user, rid) in [(alice, &first.request_id), ("bob", &bob_rid)] {
        let mine = api
            .orders(Some(&cid), Some(user))
            .await
            .expect("list orders");
        assert_eq!(mine.len(), 1, "{user}: {mine:?}");
        assert_eq!(&mine[0].request_id, rid);
        assert_eq!(mine[0].order_id, order_id_for(rid));
    }

    // Redis: two units reserved, one per user.
    let keys = stack.keys.campaign(&cid);
    let mut con = stack.redis_con().await;
    let reserved: i64 = con.hget(&keys.stock, "reserved").await.expect("HGET");
    assert_eq!(reserved, 2);
    let users: HashMap<String, i64> = con.hgetall(&keys.users).await.expect("HGETALL");
    assert_eq!(
        users,
        HashMap::from([("alice".to_owned(), 1), ("bob".to_owned(), 1)])
    );

    let expected = HashMap::from([
        (first.request_id.clone(), Some(first.clone())),
        (bob_rid.clone(), None),
    ]);
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(30)).await;
    assert_clean(&report);
}

// ---------------------------------------------------------------------------
// Window, close and draft

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
/// published, over HTTP and from Kafka alike; reset is off by default; the
/// checker finds every campaign clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_close_and_draft_refuse_purchases_over_http_and_kafka_and_reset_is_off_by_default() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let producer = stack.producer();
    let na = DecisionStatus::NotActive;

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
    let mut decided: Vec<Decision> = vec![d];
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
    decided.extend([http, kafka]);

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
    decided.extend([http, kafka]);
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
    decided.extend([http, kafka]);

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
    decided.extend([http, kafka]);
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
    decided.extend([http, kafka]);
    sleep_until_ms(ends_ms + 1200).await;
    assert_eq!(
        api.campaign(&timed).await.expect("view").state,
        CampaignState::Closed
    );
    let (http, kafka) = both_paths(&api, &stack, &producer, &timed, "too-late").await;
    assert_refused(&http, na, "ended", "HTTP after ends_at");
    assert_refused(&kafka, na, "ended", "Kafka after ends_at");
    decided.extend([http, kafka]);
    assert_eq!(
        stock_of(&api.campaign(&timed).await.expect("view")),
        (10, 8, 2, 0)
    );

    // The shared checker finds every campaign clean: the refusals took
    // nothing, each reservation holds its unit and has its order.
    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        decided.len(),
        Duration::from_secs(60),
    )
    .await;
    for cid in [&shut, &draft, &timed] {
        let expected: HashMap<String, Option<Decision>> = decided
            .iter()
            .filter(|d| &d.campaign_id == cid)
            .map(|d| (d.request_id.clone(), Some(d.clone())))
            .collect();
        let report =
            check_campaign(&stack, &api, &log, cid, &expected, Duration::from_secs(30)).await;
        assert_clean(&report);
    }
    drop(all);
}

/// A campaign closed in the middle of a sale, with purchases in flight:
/// 100 buyers are served first; then 300 more arrive over 6 s while the
/// campaign is closed (once 50 of them are served). Every purchase sent
/// after the close was answered (plus the 300 ms ingest may cache a
/// campaign) is refused not_active / closed without an order, and so are
/// purchases produced straight to Kafka afterwards; those in flight at the
/// close are reserved or refused closed, nothing else. The campaign stays
/// closed with its stock as the decisions say, and the checker finds it
/// clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_closed_mid_sale_refuses_every_later_purchase_and_invariants_hold() {
    const STOCK: u64 = 1000;
    const BEFORE: usize = 100;
    const DURING: usize = 300;
    const KAFKA_AFTER: usize = 50;
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("midclose-{}", token(6));
    api.create_campaign(&CampaignArgs::new(&cid, STOCK, 1))
        .await;

    let before: Vec<Decision> = within(
        300,
        "the purchases before the close",
        stream::iter(0..BEFORE)
            .map(|i| {
                let api = api.clone();
                let cid = cid.clone();
                async move {
                    api.purchase_decided(&cid, &format!("early-{i:03}"), &format!("e-{i}"), None)
                        .await
                }
            })
            .buffer_unordered(50)
            .collect(),
    )
    .await;
    assert!(
        before.iter().all(|d| d.status == DecisionStatus::Reserved),
        "before the close: {:?}",
        common::tally(&before)
    );

    // The sale goes on: one purchase every 20 ms, each noting when it was sent.
    let load = {
        let api = api.clone();
        let cid = cid.clone();
        tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            futures::future::join_all((0..DURING).map(|i| {
                let api = api.clone();
                let cid = cid.clone();
                async move {
                    tokio::time::sleep_until(t0 + Duration::from_millis(20 * i as u64)).await;
                    let sent_ms = now_ms();
                    let d = api
                        .purchase_decided(&cid, &format!("mid-{i:03}"), &format!("m-{i}"), None)
                        .await;
                    (sent_ms, d)
                }
            }))
            .await
        })
    };
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            let v = api.campaign(&cid).await?;
            if v.stock.reserved >= (BEFORE + 50) as u64 {
                Ok(())
            } else {
                Err(format!("{:?}", v.stock))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the sale never got going: {e}"));
    let r = api
        .post(&format!("/v1/campaigns/{cid}/close"), &json!({}), &[])
        .await
        .expect("close");
    assert_eq!(r.status, 200, "close: {}", r.body);
    assert_eq!(r.body["state"], json!("closed"), "{}", r.body);
    let closed_ms = now_ms();
    let during = within(300, "the purchases around the close", load)
        .await
        .expect("load task");

    // After the close: refused; in flight at the close: reserved or refused.
    let mut violations = Vec::new();
    let mut after_close = 0;
    let mut reserved_during = 0;
    for (sent_ms, d) in &during {
        let refused_closed = d.status == DecisionStatus::NotActive
            && d.reason.map(|r| r.as_str()) == Some("closed")
            && d.order_id.is_none();
        if *sent_ms >= closed_ms + 300 {
            after_close += 1;
            if !refused_closed {
                violations.push(format!(
                    "sent {} ms after the close: {d:?}",
                    sent_ms - closed_ms
                ));
            }
        } else if d.status == DecisionStatus::Reserved {
            reserved_during += 1;
        } else if !refused_closed {
            violations.push(format!(
                "in flight at the close (sent {} ms before it): {d:?}",
                closed_ms - sent_ms
            ));
        }
    }
    eprintln!(
        "around the close: {:?}; {after_close} sent after it, {reserved_during} reserved before it",
        common::tally(during.iter().map(|(_, d)| d))
    );
    assert_none("purchases around the close", &violations);
    assert!(
        reserved_during >= 50,
        "the close must land mid-sale: {reserved_during} reserved before it"
    );
    assert!(
        after_close >= 50,
        "the close must land mid-sale: only {after_close} purchases sent after it"
    );

    // Straight to Kafka, afterwards: refused too.
    let producer = stack.producer();
    let kafka: Vec<(String, String)> = (0..KAFKA_AFTER)
        .map(|i| (new_request_id(), format!("late-{i:03}")))
        .collect();
    common::sale::produce_purchases(&stack, &producer, &cid, &kafka).await;
    let mut kafka_decisions = Vec::new();
    for (rid, _) in &kafka {
        let d = api.wait_decision(rid, Duration::from_secs(60)).await;
        assert_refused(
            &d,
            DecisionStatus::NotActive,
            "closed",
            "Kafka after the close",
        );
        kafka_decisions.push(d);
    }

    // The campaign stays closed, its stock as the decisions say.
    let v = api.campaign(&cid).await.expect("view");
    assert_eq!(v.state, CampaignState::Closed, "{v:?}");
    let reserved = BEFORE + reserved_during;
    assert_eq!(
        stock_of(&v),
        (STOCK, STOCK - reserved as u64, reserved as u64, 0),
        "{:?}",
        v.stock
    );
    let orders = api
        .wait_orders(&cid, reserved, Duration::from_secs(60))
        .await;
    assert_eq!(orders.len(), reserved, "one order per reservation");

    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        reserved + KAFKA_AFTER,
        Duration::from_secs(120),
    )
    .await;
    let expected: HashMap<String, Option<Decision>> = before
        .into_iter()
        .chain(during.into_iter().map(|(_, d)| d))
        .chain(kafka_decisions)
        .map(|d| (d.request_id.clone(), Some(d)))
        .collect();
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(60)).await;
    assert_clean(&report);
    assert_eq!(report.reserved_units, reserved as i64, "{report}");
    drop(all);
}

// ---------------------------------------------------------------------------
// Reset

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

// ---------------------------------------------------------------------------
// One validation for both sides

/// What a processor would dead-letter is refused at the door: a purchase
/// with more attributes than a request event may carry is answered 400
/// (not 202 and then `pending` forever). One user's Idempotency-Key reused
/// on a second campaign is a second request, with its own id and order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_what_processors_would_dead_letter_and_keys_are_scoped_per_campaign() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let (c1, c2) = (
        format!("scope1-{}", token(6)),
        format!("scope2-{}", token(6)),
    );
    api.create_campaign(&CampaignArgs::new(&c1, 10, 1)).await;
    api.create_campaign(&CampaignArgs::new(&c2, 10, 1)).await;

    // 40 attributes (the processors take 32), in the caller's token.
    let attributes: serde_json::Map<String, serde_json::Value> =
        (0..40).map(|i| (format!("a{i}"), json!(i))).collect();
    let auth = Api::bearer_with("alice", &[], Some(&json!(attributes)));
    let reply = api
        .post(
            "/v1/purchases",
            &json!({ "campaign_id": c1 }),
            &[("Authorization", &auth), ("Idempotency-Key", "too-many")],
        )
        .await
        .expect("POST /v1/purchases");
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.to_string().contains("attributes"),
        "the 400 does not say what to fix: {}",
        reply.body
    );

    let first = api.purchase_decided(&c1, "bob", "same-key", None).await;
    let second = api.purchase_decided(&c2, "bob", "same-key", None).await;
    assert_ne!(first.request_id, second.request_id);
    assert_eq!(first.status, DecisionStatus::Reserved, "{first:?}");
    assert_eq!(second.status, DecisionStatus::Reserved, "{second:?}");
    assert_ne!(first.order_id, second.order_id);
    assert_eq!(first.campaign_id, c1);
    assert_eq!(second.campaign_id, c2);
}
