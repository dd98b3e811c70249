//! Lotteries and the rules of taking part: draws (win rate, prize mix,
//! `fixed` and `renormalize` strategies once a prize sells out), redelivered
//! draws, attempts per user, eligibility rules, and the participation and
//! stats endpoints that report them.
//!
//! | guarantee | test |
//! | --- | --- |
//! | every draw is the one its (seed, request id) point gives; win rate and prize mix as configured; strategies after a sell-out; a redelivered draw repeats its result | `lottery_20000_draws_match_win_rate_prize_mix_strategies_and_redelivery_repeats` |
//! | an eligibility rule tree gives the same answers over HTTP and Kafka | `eligibility_rule_tree_gives_the_same_answers_over_http_and_kafka` |
//! | participation and stats report current holdings and attempts; `max_attempts_per_user` refuses the next draw | `participation_and_stats_endpoints_report_current_holdings_and_attempts` |
//!
//! Every test runs the real `seckill` binary on a private redis-server and
//! tansu broker (see tests/common).
//!
//! Run: `cargo test -p seckill-cli --test lottery -- --test-threads=1`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::sale::{
    all_orders, buy, campaign_body, create, decision_count, decisions_total, order_command,
    participation, produce_purchases, stats, wait_decided,
};
use common::{
    assert_clean, assert_none, check_campaign, eventually, new_request_id, purchase_json,
    read_decisions, token, Api, Stack,
};
use seckill_schemas::{
    draw_point, order_id_for, CampaignSpec, CampaignState, CampaignView, Decision, DecisionStatus,
    DrawStrategy, PrizeSpec, RefusalReason,
};

// ---------------------------------------------------------------------------
// Draws

/// What a draw should give, by the rules of the design.
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

    // The shared checker finds each campaign clean: every draw decided,
    // one order per win, counters that match the store.
    for (cid, list) in [
        (&mix, &mix_draws),
        (&fixed, &fixed_draws),
        (&renorm, &renorm_draws),
    ] {
        let mut expected: HashMap<String, Option<Decision>> =
            list.iter().map(|(rid, _)| (rid.clone(), None)).collect();
        expected.insert(marker[cid].request_id.clone(), Some(marker[cid].clone()));
        let report =
            check_campaign(&stack, &api, &log, cid, &expected, Duration::from_secs(120)).await;
        assert_clean(&report);
    }
    drop(all);
}

// ---------------------------------------------------------------------------
// Eligibility

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
    let mut decided: Vec<Decision> = Vec::new();
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
        decided.extend([http, kafka]);
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

    // The shared checker agrees: a unit per eligible request, no more.
    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        cases.len(),
        Duration::from_secs(60),
    )
    .await;
    let expected: HashMap<String, Option<Decision>> = decided
        .into_iter()
        .map(|d| (d.request_id.clone(), Some(d)))
        .collect();
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(30)).await;
    assert_clean(&report);
    drop(all);
}

// ---------------------------------------------------------------------------
// Participation, attempts and stats

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

    // The shared checker agrees with the stats: ann's unit reserved,
    // ben's returned once.
    let decisions = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        2,
        Duration::from_secs(60),
    )
    .await;
    let expected = HashMap::from([
        (a.request_id.clone(), Some(a.clone())),
        (b.request_id.clone(), Some(b.clone())),
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
