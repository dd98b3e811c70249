//! Stock: a unit is sold at most once, never beyond what was added, and
//! never beyond a user's limit, whatever the load.
//!
//! | guarantee | test |
//! | --- | --- |
//! | no oversell under a race: exactly `stock` reserved, the rest sold out | `race_2000_users_for_100_units_exactly_100_reserved_1900_sold_out` |
//! | per-user limit, one purchase after another | `per_user_limit_2_third_purchase_is_limit_exceeded` |
//! | per-user limit under concurrent purchases of one user | `per_user_limit_2_one_user_racing_10_concurrent_purchases_gets_exactly_2_units` |
//! | invariants per campaign under mixed multi-campaign load (HTTP + Kafka, 4 partitions) | `four_partitions_20_campaigns_mixed_load_invariants_hold_per_campaign` |
//! | stock added mid-sale is sold exactly once | `stock_added_mid_sale_is_sold_exactly_once_and_no_more` |
//!
//! Every test runs the real `seckill` binary on a private redis-server and
//! tansu broker (see tests/common).
//!
//! Run: `cargo test -p seckill-cli --test stock -- --test-threads=1`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use common::kafka::partition_count;
use common::sale::{buy, campaign_body, create, participation, produce_purchases, stock_of};
use common::{
    assert_clean, check_campaign, new_request_id, purchase_json, read_decisions, tally, token,
    within, Api, CampaignArgs, Stack,
};
use seckill_schemas::{order_id_for, CampaignState, CampaignView, Decision, DecisionStatus};

// ---------------------------------------------------------------------------
// The race

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
// Per-user limits

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
    assert!(!bad.counters_mismatch.is_empty(), "{bad}");
}

/// One user with per_user_limit = 2 fires 10 purchases at once over HTTP
/// (10 different Idempotency-Keys, so 10 requests) at a campaign with
/// ample stock: exactly 2 are reserved and 8 refused limit_exceeded, the
/// store holds 2 orders for the user, Redis says the user holds 2, and the
/// checker finds the campaign clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limit_2_one_user_racing_10_concurrent_purchases_gets_exactly_2_units() {
    const LIMIT: u32 = 2;
    const TRIES: usize = 10;
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("limitrace-{}", token(6));
    api.create_campaign(&CampaignArgs::new(&cid, 100, LIMIT))
        .await;

    let user = "hoarder";
    let decisions: Vec<Decision> = within(
        300,
        "10 concurrent purchases of one user",
        futures::future::join_all((0..TRIES).map(|i| {
            let api = api.clone();
            let cid = cid.clone();
            async move {
                api.purchase_decided(&cid, user, &format!("hoard-{i}"), None)
                    .await
            }
        })),
    )
    .await;
    let ids: HashSet<&str> = decisions.iter().map(|d| d.request_id.as_str()).collect();
    assert_eq!(ids.len(), TRIES, "one request per Idempotency-Key");
    let counts = tally(&decisions);
    eprintln!("decisions: {counts:?}");
    assert_eq!(
        counts.get("reserved"),
        Some(&(LIMIT as usize)),
        "{counts:?}"
    );
    assert_eq!(
        counts.get("limit_exceeded"),
        Some(&(TRIES - LIMIT as usize)),
        "{counts:?}"
    );
    for d in &decisions {
        assert_eq!(d.user_id, user, "{d:?}");
        assert_eq!(
            d.order_id.is_some(),
            d.status == DecisionStatus::Reserved,
            "an order id exactly for a reservation: {d:?}"
        );
    }

    let mine = api
        .wait_orders(&cid, LIMIT as usize, Duration::from_secs(60))
        .await;
    assert_eq!(mine.len(), LIMIT as usize, "{mine:?}");
    assert!(mine.iter().all(|o| o.user_id == user), "{mine:?}");
    let view = api.campaign(&cid).await.expect("view");
    assert_eq!(view.stock.reserved, u64::from(LIMIT), "{:?}", view.stock);
    let held = participation(&api, &cid, user).await;
    assert_eq!(
        held["units"],
        json!(LIMIT),
        "the user holds the limit: {held}"
    );

    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        LIMIT as usize + 1,
        Duration::from_secs(60),
    )
    .await;
    let expected: HashMap<String, Option<Decision>> = decisions
        .into_iter()
        .map(|d| (d.request_id.clone(), Some(d)))
        .collect();
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(30)).await;
    assert_clean(&report);
    assert_eq!(report.reserved_units, i64::from(LIMIT), "{report}");
    drop(all);
}

// ---------------------------------------------------------------------------
// Mixed load

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
// Stock added

/// Stock added mid-sale is sold and no more: 5 units sold out, 3 added,
/// 10 more buyers (straight to Kafka) get exactly 3, a later one is sold
/// out; the checker finds the campaign clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_added_mid_sale_is_sold_exactly_once_and_no_more() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let producer = stack.producer();

    // Stock added mid-sale: 5 sold, 3 added, 10 more buyers get exactly 3.
    let more = format!("more-{}", token(6));
    create(
        &api,
        &campaign_body(&more, 5, json!({})),
        CampaignState::Active,
    )
    .await;
    let mut decisions = Vec::new();
    for i in 0..5 {
        let d = buy(&api, &more, &format!("first-{i}"), "k", None).await;
        assert_eq!(d.status, DecisionStatus::Reserved, "{d:?}");
        decisions.push(d);
    }
    let sixth = buy(&api, &more, "first-5", "k", None).await;
    assert_eq!(sixth.status, DecisionStatus::SoldOut, "{sixth:?}");
    decisions.push(sixth);
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
        decisions.push(d);
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
    decisions.push(late);
    let orders = api.wait_orders(&more, 8, Duration::from_secs(30)).await;
    assert_eq!(orders.len(), 8, "{orders:?}");

    // The shared checker agrees: 8 units reserved of 8, one order each.
    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        15,
        Duration::from_secs(60),
    )
    .await;
    let expected: HashMap<String, Option<Decision>> = decisions
        .into_iter()
        .map(|d| (d.request_id.clone(), Some(d)))
        .collect();
    let report = check_campaign(
        &stack,
        &api,
        &log,
        &more,
        &expected,
        Duration::from_secs(30),
    )
    .await;
    assert_clean(&report);
    assert_eq!(report.reserved_units, 8, "{report}");
    drop(all);
}
