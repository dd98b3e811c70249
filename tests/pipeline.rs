//! End-to-end tests of the whole pipeline (issue 2): ingest -> Kafka ->
//! processors (Redis Lua) -> sinks -> order store, on a real redis-server
//! and a real tansu broker that each test starts for itself.
//!
//! Run: `cargo test -p seckill-cli --test pipeline -- --test-threads=2`.
//! Needs `redis-server` and `tansu` 0.6.0 built with the `dynostore`
//! feature (in-memory storage); see tests/common/mod.rs for the knobs.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;

use common::kafka::{header, partition_count};
use common::{
    check_campaign, consume_topic, pid_alive, purchase_json, read_decisions, token, within, Api,
    CampaignArgs, Stack,
};
use seckill_schemas::{order_id_for, Decision, DecisionStatus};

/// Counts decisions by status.
fn tally<'a>(decisions: impl IntoIterator<Item = &'a Decision>) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for d in decisions {
        *out.entry(d.status.as_str()).or_default() += 1;
    }
    out
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Asserts a report is clean, printing it either way.
fn assert_clean(report: &common::Report) {
    eprintln!("{report}");
    assert!(report.is_clean(), "invariants violated:\n{report}");
}

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
        seckill_kafka::ensure_topics(&kafka, &stack.topics, 3, 3),
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
// 1. The race

/// 2,000 distinct users race over HTTP for 100 units: exactly 100 reserved,
/// 1,900 sold out, 100 orders in the store, nothing left available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_2000_users_for_100_units_exactly_100_reserved_1900_sold_out() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("race-{}", token(6));
    api.create_campaign(&CampaignArgs::new(&cid, 100, 1)).await;

    let started = Instant::now();
    let results: Vec<(String, Decision)> = within(
        600,
        "2,000 purchases",
        stream::iter(0..2000)
            .map(|i| {
                let api = api.clone();
                let cid = cid.clone();
                async move {
                    let user = format!("racer-{i:04}");
                    let d = api
                        .purchase_decided(&cid, &user, &format!("buy-{i}"), None)
                        .await;
                    (user, d)
                }
            })
            .buffer_unordered(200)
            .collect(),
    )
    .await;
    eprintln!("2,000 purchases decided in {:?}", started.elapsed());

    for (user, d) in &results {
        assert_eq!(&d.user_id, user, "{d:?}");
        assert_eq!(d.campaign_id, cid, "{d:?}");
    }
    let ids: HashSet<&str> = results.iter().map(|(_, d)| d.request_id.as_str()).collect();
    assert_eq!(ids.len(), 2000, "every purchase has its own request id");
    let counts = tally(results.iter().map(|(_, d)| d));
    eprintln!("decisions: {counts:?}");
    assert_eq!(counts.get("reserved"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("sold_out"), Some(&1900), "{counts:?}");

    let orders = api.wait_orders(&cid, 100, Duration::from_secs(120)).await;
    assert_eq!(orders.len(), 100, "orders in the store");

    let view = common::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let v = api.campaign(&cid).await?;
            if v.stock.available == 0 && v.stock.reserved == 100 {
                Ok(v)
            } else {
                Err(format!("{:?}", v.stock))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("campaign stock never settled at available 0 / reserved 100: {e}"));
    assert_eq!(view.stock.total, 100);
    assert_eq!(view.stock.paid, 0);

    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        101,
        Duration::from_secs(120),
    )
    .await;
    let expected: HashMap<String, Option<Decision>> = results
        .into_iter()
        .map(|(_, d)| (d.request_id.clone(), Some(d)))
        .collect();
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(60)).await;
    assert_clean(&report);
    drop(all);
}

// ---------------------------------------------------------------------------
// 2. Redelivery

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
// 3. Per-user limit

/// With per_user_limit = 2 a user's first two purchases are reserved and
/// the third is limit_exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limit_2_third_purchase_is_limit_exceeded() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("limit-{}", token(6));
    api.create_campaign(&CampaignArgs::new(&cid, 10, 2)).await;

    let mut decisions = Vec::new();
    for n in 1..=3 {
        decisions.push(
            api.purchase_decided(&cid, "carol", &format!("carol-{n}"), None)
                .await,
        );
    }
    let statuses: Vec<DecisionStatus> = decisions.iter().map(|d| d.status).collect();
    assert_eq!(
        statuses,
        [
            DecisionStatus::Reserved,
            DecisionStatus::Reserved,
            DecisionStatus::LimitExceeded
        ],
        "{decisions:?}"
    );
    assert!(decisions[2].order_id.is_none(), "{:?}", decisions[2]);
    // Another user is not affected by carol's limit.
    let dan = api.purchase_decided(&cid, "dan", "dan-1", None).await;
    assert_eq!(dan.status, DecisionStatus::Reserved, "{dan:?}");

    let orders = api.wait_orders(&cid, 3, Duration::from_secs(60)).await;
    assert_eq!(orders.len(), 3, "{orders:?}");
    let carol = api
        .orders(Some(&cid), Some("carol"))
        .await
        .expect("list orders");
    assert_eq!(carol.len(), 2, "{carol:?}");

    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        5,
        Duration::from_secs(60),
    )
    .await;
    let expected: HashMap<String, Option<Decision>> = decisions
        .into_iter()
        .chain([dan])
        .map(|d| (d.request_id.clone(), Some(d)))
        .collect();
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(30)).await;
    assert_clean(&report);

    // The checker is not vacuous: a reservation nobody stored, a request
    // without a decision and a second, different decision are all caught.
    let ghost = new_request_id();
    let mut by_request = log.by_request.clone();
    by_request.insert(
        ghost.clone(),
        vec![Decision {
            request_id: ghost.clone(),
            campaign_id: cid.clone(),
            user_id: "ghost".to_owned(),
            status: DecisionStatus::Reserved,
            reason: None,
            order_id: Some(order_id_for(&ghost)),
            quantity: Some(1),
            expires_at_ms: None,
            prize_id: None,
            prize_name: None,
        }],
    );
    let carol_first = expected.keys().next().expect("a request").clone();
    let mut other = log.first(&carol_first).expect("decided").clone();
    other.status = DecisionStatus::SoldOut;
    other.order_id = None;
    by_request
        .get_mut(&carol_first)
        .expect("decided")
        .push(other);
    let tampered = common::DecisionLog {
        by_request,
        ..Default::default()
    };
    let mut with_lost = expected.clone();
    with_lost.insert(new_request_id(), None);
    let bad = check_campaign(
        &stack,
        &api,
        &tampered,
        &cid,
        &with_lost,
        Duration::from_secs(1),
    )
    .await;
    eprintln!("tampered evidence gives:\n{bad}");
    assert_eq!(bad.orders_missing_from_store.len(), 1, "{bad}");
    assert_eq!(bad.undecided_requests.len(), 1, "{bad}");
    assert_eq!(bad.conflicting_decisions.len(), 1, "{bad}");
    assert!(!bad.counters.is_empty(), "{bad}");
}

// ---------------------------------------------------------------------------
// 4. Mixed load

/// 4 partitions, 20 campaigns, 3,000 requests (HTTP and straight to Kafka,
/// users repeating): per campaign nothing oversold, store == reserved
/// decisions, nobody over the limit, every request decided, counters add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_partitions_20_campaigns_mixed_load_invariants_hold_per_campaign() {
    const CAMPAIGNS: usize = 20;
    const HTTP_REQUESTS: usize = 2400;
    const KAFKA_REQUESTS: usize = 600;
    const USERS: usize = 300;

    let stack = Stack::start().await;
    let all = stack
        .seckill(&["all"], &[("SECKILL_PARTITIONS", "4")])
        .await;
    let api = Api::new(all.http.as_deref().expect("http"));
    assert_eq!(
        partition_count(&stack.kafka(), &stack.topics.requests).await,
        Ok(4)
    );

    let tag = token(5);
    let stocks = [5u64, 10, 25, 40, 80, 200];
    let campaigns: Vec<CampaignArgs> = (0..CAMPAIGNS)
        .map(|i| {
            CampaignArgs::new(
                format!("mix-{tag}-{i:02}"),
                stocks[i % stocks.len()],
                1 + (i % 3) as u32,
            )
        })
        .collect();
    for c in &campaigns {
        api.create_campaign(c).await;
    }

    // The load: hot campaigns get more traffic; users repeat; some ask for 2.
    let mut rng = StdRng::seed_from_u64(0x5EC1_0004);
    let mut plan: Vec<(usize, String, Option<u32>)> = Vec::new();
    for _ in 0..HTTP_REQUESTS + KAFKA_REQUESTS {
        let c = if rng.random_bool(0.4) {
            rng.random_range(0..4)
        } else {
            rng.random_range(0..CAMPAIGNS)
        };
        let user = format!("shopper-{:03}", rng.random_range(0..USERS));
        let quantity = if rng.random_bool(0.1) { Some(2) } else { None };
        plan.push((c, user, quantity));
    }
    let (http_plan, kafka_plan) = plan.split_at(HTTP_REQUESTS);

    // Straight to Kafka, in the background, while HTTP traffic runs.
    let kafka_sent: Vec<(usize, String)> = kafka_plan
        .iter()
        .map(|(c, _, _)| (*c, new_request_id()))
        .collect();
    let messages: Vec<(String, Vec<u8>)> = kafka_plan
        .iter()
        .zip(&kafka_sent)
        .map(|((c, user, q), (_, rid))| {
            let cid = &campaigns[*c].id;
            (cid.clone(), purchase_json(rid, cid, user, q.unwrap_or(1)))
        })
        .collect();
    let producer = stack.producer();
    let requests_topic = stack.topics.requests.clone();
    let kafka_task = tokio::spawn(async move {
        for chunk in messages.chunks(50) {
            producer.send_all(&requests_topic, chunk).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let started = Instant::now();
    let http_results: Vec<(usize, Decision)> = within(
        900,
        "HTTP purchases",
        stream::iter(http_plan.iter().enumerate())
            .map(|(i, (c, user, q))| {
                let api = api.clone();
                let cid = campaigns[*c].id.clone();
                let user = user.clone();
                let q = *q;
                async move {
                    let d = api
                        .purchase_decided(&cid, &user, &format!("mix-{i}"), q)
                        .await;
                    assert_eq!(d.campaign_id, cid);
                    assert_eq!(d.user_id, user);
                    (*c, d)
                }
            })
            .buffer_unordered(100)
            .collect(),
    )
    .await;
    within(300, "produce the Kafka share", kafka_task)
        .await
        .expect("producer task");
    eprintln!("HTTP share decided in {:?}", started.elapsed());

    // Every request produced straight to Kafka gets a decision.
    let kafka_decisions: Vec<Decision> = within(
        600,
        "decisions of the Kafka share",
        stream::iter(kafka_sent.iter())
            .map(|(_, rid)| {
                let api = api.clone();
                async move { api.wait_decision(rid, Duration::from_secs(180)).await }
            })
            .buffer_unordered(50)
            .collect(),
    )
    .await;
    eprintln!(
        "overall: {:?}",
        tally(http_results.iter().map(|(_, d)| d).chain(&kafka_decisions))
    );

    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        KAFKA_REQUESTS + CAMPAIGNS,
        Duration::from_secs(180),
    )
    .await;
    assert!(
        log.unparsed.is_empty(),
        "unparseable order events: {:?}",
        log.unparsed
    );

    let mut reports = Vec::new();
    for (i, c) in campaigns.iter().enumerate() {
        let mut expected: HashMap<String, Option<Decision>> = HashMap::new();
        for (ci, d) in &http_results {
            if *ci == i {
                expected.insert(d.request_id.clone(), Some(d.clone()));
            }
        }
        for (ci, rid) in &kafka_sent {
            if *ci == i {
                expected.insert(rid.clone(), None);
            }
        }
        let report = check_campaign(
            &stack,
            &api,
            &log,
            &c.id,
            &expected,
            Duration::from_secs(120),
        )
        .await;
        assert!(
            report.reserved_units as u64 <= c.stock,
            "{}: {} units reserved of {}",
            c.id,
            report.reserved_units,
            c.stock
        );
        reports.push(report);
    }
    let mut dirty = Vec::new();
    for r in &reports {
        eprintln!("{r}");
        if !r.is_clean() {
            dirty.push(r.to_string());
        }
    }
    assert!(
        dirty.is_empty(),
        "invariants violated:\n{}",
        dirty.join("\n")
    );
    // The load must have exercised every kind of decision somewhere.
    let overall = tally(http_results.iter().map(|(_, d)| d).chain(&kafka_decisions));
    for status in ["reserved", "sold_out"] {
        assert!(
            overall.contains_key(status),
            "no {status} decision at all: {overall:?}"
        );
    }
    assert!(
        overall.contains_key("duplicate") || overall.contains_key("limit_exceeded"),
        "no per-user limit was hit: {overall:?}"
    );
}

// ---------------------------------------------------------------------------
// 5. Crash safety

/// The processor is killed with SIGKILL in the middle of a stream of 5,000
/// purchases and restarted: no duplicate orders, every request decided,
/// reserved == min(stock, requests) and it matches the counters and the
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sigkilled_mid_stream_and_restarted_no_duplicates_every_request_decided() {
    const REQUESTS: usize = 5000;
    const STOCK: u64 = 800;

    let stack = Stack::start().await;
    let partitions = [("SECKILL_PARTITIONS", "2")];
    stack
        .seckill_run(&["topics", "create"], &partitions, 120)
        .await;
    let ingest = stack.seckill(&["ingest"], &partitions).await;
    let sink = stack.seckill(&["sink"], &partitions).await;
    let mut processor = stack.seckill(&["process"], &partitions).await;
    let api = Api::new(ingest.http.as_deref().expect("http"));
    let cid = format!("crash-{}", token(6));
    api.create_campaign(&CampaignArgs::new(&cid, STOCK, 1))
        .await;

    // A steady stream: 250 purchases every 150 ms.
    let sent: Vec<String> = (0..REQUESTS).map(|_| new_request_id()).collect();
    let messages: Vec<(String, Vec<u8>)> = sent
        .iter()
        .enumerate()
        .map(|(i, rid)| {
            (
                cid.clone(),
                purchase_json(rid, &cid, &format!("fan-{i:05}"), 1),
            )
        })
        .collect();
    let producer = stack.producer();
    let topic = stack.topics.requests.clone();
    let stream_task = tokio::spawn(async move {
        for chunk in messages.chunks(250) {
            producer.send_all(&topic, chunk).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });

    // Kill -9 once a good share is decided (the campaign's request hash
    // holds one entry per decided request, plus the campaign command).
    let keys = stack.keys.campaign(&cid);
    let mut con = stack.redis_con().await;
    let decided_at_kill =
        common::eventually(Duration::from_secs(180), Duration::from_millis(20), || {
            let mut con = con.clone();
            let key = keys.requests.clone();
            async move {
                let n: usize = con.hlen(&key).await.map_err(|e| e.to_string())?;
                if n > 1000 {
                    Ok(n)
                } else {
                    Err(format!("{n} decided"))
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("decisions never got going: {e}"));
    processor.kill9();
    let stream_done_at_kill = stream_task.is_finished();
    eprintln!(
        "processor killed with ~{decided_at_kill} requests decided (stream finished: {stream_done_at_kill})"
    );
    assert!(
        decided_at_kill < REQUESTS,
        "the processor decided everything before the kill; the test needs a longer stream"
    );
    // Restarted a few seconds later, as an orchestrator would. This delay
    // also lands the new member in a window in which tansu 0.6 expels the
    // dead leader between the newcomer's JoinGroup and SyncGroup and then
    // settles a generation that gives the newcomer nothing; the processor
    // must notice that and rejoin (runtime::watch_assignment).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    processor.restart().await;
    within(300, "produce the stream", stream_task)
        .await
        .expect("producer task");

    // Every request decided (the campaign's request hash has them all).
    let settled = common::eventually(Duration::from_secs(300), Duration::from_millis(250), || {
        let mut con = con.clone();
        let key = keys.requests.clone();
        let sent = &sent;
        async move {
            let decided: HashSet<String> = con.hkeys(&key).await.map_err(|e| e.to_string())?;
            let missing = sent.iter().filter(|r| !decided.contains(*r)).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {REQUESTS} requests undecided"))
            }
        }
    })
    .await;
    if let Err(e) = settled {
        processor.assert_alive();
        panic!("not every request was decided after the restart: {e}");
    }
    // Decision events of the last batches may still be on their way.
    let log = common::eventually(Duration::from_secs(120), Duration::from_secs(1), || async {
        let log = read_decisions(
            &stack.kafka(),
            &stack.topics.orders,
            REQUESTS,
            Duration::from_secs(120),
        )
        .await;
        if sent.iter().all(|r| log.first(r).is_some()) {
            Ok(log)
        } else {
            Err(log)
        }
    })
    .await
    .unwrap_or_else(|log| log);
    let undecided: Vec<&String> = sent.iter().filter(|r| log.first(r).is_none()).collect();
    assert!(
        undecided.is_empty(),
        "{} requests without a decision event, e.g. {:?}",
        undecided.len(),
        &undecided[..undecided.len().min(5)]
    );
    let events: usize = sent.iter().map(|r| log.by_request[r].len()).sum();
    eprintln!(
        "{events} decision events for {REQUESTS} requests (redelivered: {})",
        events - REQUESTS
    );

    let reserved: HashSet<&str> = sent
        .iter()
        .filter(|r| log.first(r).map(|d| d.status) == Some(DecisionStatus::Reserved))
        .map(|r| r.as_str())
        .collect();
    assert_eq!(
        reserved.len() as u64,
        STOCK.min(REQUESTS as u64),
        "reserved requests"
    );
    let stock: HashMap<String, i64> = con.hgetall(&keys.stock).await.expect("HGETALL");
    assert_eq!(stock.get("reserved"), Some(&(STOCK as i64)), "{stock:?}");
    assert_eq!(stock.get("available"), Some(&0), "{stock:?}");

    let orders = api
        .wait_orders(&cid, STOCK as usize, Duration::from_secs(180))
        .await;
    let order_ids: HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    assert_eq!(order_ids.len(), orders.len(), "duplicate order rows");
    let store_requests: HashSet<&str> = orders.iter().map(|o| o.request_id.as_str()).collect();
    assert_eq!(
        store_requests, reserved,
        "store orders == distinct reserved request ids"
    );

    let expected: HashMap<String, Option<Decision>> =
        sent.iter().map(|r| (r.clone(), None)).collect();
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(60)).await;
    assert_clean(&report);
    drop(sink);
}

// ---------------------------------------------------------------------------
// 6. Bad input

/// Malformed messages on the requests topic (not JSON; JSON without a
/// request id) land in the requests DLQ with a seckill-error header, and
/// purchases produced after them are still decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_messages_land_in_dlq_with_reason_and_stream_goes_on() {
    let stack = Stack::start().await;
    let mut all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("dlq-{}", token(6));
    api.create_campaign(&CampaignArgs::new(&cid, 10, 1)).await;

    let producer = stack.producer();
    let not_json = b"this is {not JSON".to_vec();
    let missing_field = serde_json::to_vec(&serde_json::json!({
        "type": "purchase_requested",
        "schema_version": 1,
        "campaign_id": cid,
        "user_id": "mallory",
        "quantity": 1,
    }))
    .expect("json");
    producer
        .send(&stack.topics.requests, Some(&cid), &not_json)
        .await;
    producer
        .send(&stack.topics.requests, Some(&cid), &missing_field)
        .await;

    let good: Vec<(String, String)> = ["dave", "erin", "frank"]
        .iter()
        .map(|u| (new_request_id(), (*u).to_owned()))
        .collect();
    for (rid, user) in &good {
        producer
            .send(
                &stack.topics.requests,
                Some(&cid),
                &purchase_json(rid, &cid, user, 1),
            )
            .await;
    }
    for (rid, user) in &good {
        let d = api.wait_decision(rid, Duration::from_secs(60)).await;
        assert_eq!(d.status, DecisionStatus::Reserved, "{d:?}");
        assert_eq!(&d.user_id, user);
    }

    let dlq = consume_topic(
        &stack.kafka(),
        &stack.topics.requests_dlq,
        2,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await;
    for (what, payload) in [
        ("not JSON", &not_json),
        ("missing request_id", &missing_field),
    ] {
        let hits: Vec<_> = dlq
            .iter()
            .filter(|m| rdkafka::Message::payload(*m) == Some(payload.as_slice()))
            .collect();
        assert!(
            !hits.is_empty(),
            "the {what} message is not in {}",
            stack.topics.requests_dlq
        );
        for m in hits {
            let reason = header(m, "seckill-error").unwrap_or_default();
            eprintln!(
                "DLQ {what}: seckill-error = {reason:?}, class = {:?}",
                header(m, "seckill-error-class")
            );
            assert!(
                !reason.trim().is_empty(),
                "the {what} DLQ entry has no seckill-error header"
            );
            assert!(
                header(m, "seckill-error-class").is_some(),
                "the {what} DLQ entry has no seckill-error-class header"
            );
            assert_eq!(
                rdkafka::Message::key(m),
                Some(cid.as_bytes()),
                "the DLQ entry keeps the original key"
            );
        }
    }
    assert_eq!(dlq.len(), 2, "only the two bad messages are dead-lettered");
    all.assert_alive();

    // A later purchase over HTTP is decided too.
    let late = api.purchase_decided(&cid, "grace", "grace-1", None).await;
    assert_eq!(late.status, DecisionStatus::Reserved, "{late:?}");

    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        5,
        Duration::from_secs(60),
    )
    .await;
    let mut expected: HashMap<String, Option<Decision>> =
        good.iter().map(|(rid, _)| (rid.clone(), None)).collect();
    expected.insert(late.request_id.clone(), Some(late));
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(30)).await;
    assert_clean(&report);
}
