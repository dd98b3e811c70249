//! Lotteries and the rules of taking part: draws (win rate, prize mix,
//! `fixed` and `renormalize` strategies once a prize sells out), redelivered
//! draws, attempts per user, eligibility rules, and the participation and
//! stats endpoints that report them.
//!
//! | guarantee | test |
//! | --- | --- |
//! | every draw is the one its (draw secret, request id) point gives, the secret being the one revealed at close, which matches the commitment shown from creation; win rate and prize mix as configured; strategies after a sell-out; a redelivered draw repeats its result | `lottery_20000_draws_match_win_rate_prize_mix_strategies_and_redelivery_repeats` |
//! | draws are unpredictable: Idempotency-Keys chosen offline to win under the old public-seed scheme win no more than chance (2,000 draws at 0.1 inside the two-sided 99.9 % binomial interval); the secret is in no Redis value and no topic message while the campaign is open, only its commitment is shown; it is revealed at close and then buys nothing; a definition with `seed` is refused, saying why | `adversarial_idempotency_keys_win_no_more_than_chance_while_the_draw_secret_is_unknown` |
//! | `seckill verify-draws` refuses before close; after close it verifies every draw (prize table run down, stock added to a prize, prizes returned by cancels) and every stored order, and fails naming the order when a store row is tampered with and the request when a winning decision is forged on the orders topic | `verify_draws_passes_after_close_and_names_a_tampered_order_and_a_forged_win` |
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
    assert_clean, assert_none, check_campaign, eventually, last_json, new_request_id,
    purchase_json, read_decisions, read_topic, token, Api, Stack,
};
use rdkafka::message::Message;
use seckill_schemas::{
    draw_point, now_ms, order_id_for, request_id_for_key, CampaignSpec, CampaignState,
    CampaignView, Decision, DecisionStatus, DrawSecret, DrawStrategy, OrderEvent, PrizeSpec,
    RefusalReason, Reserved,
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

    // Close the three lotteries: their views reveal the draw secrets, each
    // the one its commitment (shown from creation) commits to.
    let mut secrets: HashMap<String, DrawSecret> = HashMap::new();
    for open in [&mix_view, &fixed_view, &renorm_view] {
        let closed = close(&api, &open.id).await;
        secrets.insert(open.id.clone(), revealed(&stack, open, &closed));
    }

    // Every draw is the one the rules give for its point.
    let check = |view: &CampaignView, list: &[(String, String)]| -> (Vec<Sim>, Vec<String>) {
        let spec: &CampaignSpec = &view.definition;
        let secret = secrets[&spec.id].to_hex();
        let points: Vec<f64> = list
            .iter()
            .map(|(rid, _)| draw_point(&secret, rid))
            .collect();
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

/// The draw key the stack's ingest and processors share.
fn draw_key(stack: &Stack) -> Vec<u8> {
    std::fs::read(stack.draw_key_path())
        .expect("read the stack's draw key")
        .trim_ascii()
        .to_vec()
}

/// Closes a campaign as the operator; returns the closed view.
async fn close(api: &Api, cid: &str) -> CampaignView {
    let r = api
        .post(&format!("/v1/campaigns/{cid}/close"), &json!({}), &[])
        .await
        .unwrap_or_else(|e| panic!("close {cid}: {e}"));
    assert_eq!(r.status, 200, "close {cid}: {}", r.body);
    let v = api.campaign(cid).await.expect("view");
    assert_eq!(v.state, CampaignState::Closed, "{v:?}");
    v
}

/// The draw secret a closed lottery reveals, checked: the view of the open
/// campaign showed the commitment and no secret; the closed one shows the
/// same commitment and a secret that matches it, the one derived from the
/// stack's draw key.
fn revealed(stack: &Stack, open: &CampaignView, closed: &CampaignView) -> DrawSecret {
    let commitment = open
        .draw_commitment
        .clone()
        .unwrap_or_else(|| panic!("{}: no draw commitment while open: {open:?}", open.id));
    assert_eq!(
        open.draw_secret, None,
        "{}: the secret is shown while open",
        open.id
    );
    assert_eq!(closed.draw_commitment.as_ref(), Some(&commitment));
    let hex = closed
        .draw_secret
        .as_deref()
        .unwrap_or_else(|| panic!("{}: no draw secret once closed: {closed:?}", closed.id));
    let secret = DrawSecret::from_hex(hex).expect("64 hex digits");
    assert!(
        secret.matches(&commitment),
        "{}: secret vs commitment",
        open.id
    );
    assert_eq!(secret, DrawSecret::derive(&draw_key(stack), &open.id));
    secret
}

/// Binomial(n, p)'s two-sided interval at `level`: the largest `lo` and
/// smallest `hi` with P(X < lo) <= (1 - level) / 2 and P(X > hi) <=
/// (1 - level) / 2, from the exact probabilities.
fn binomial_interval(n: usize, p: f64, level: f64) -> (usize, usize) {
    let tail = (1.0 - level) / 2.0;
    let mut ln_fact = vec![0.0f64; n + 1];
    for i in 1..=n {
        ln_fact[i] = ln_fact[i - 1] + (i as f64).ln();
    }
    let pmf = |k: usize| {
        (ln_fact[n] - ln_fact[k] - ln_fact[n - k]
            + k as f64 * p.ln()
            + (n - k) as f64 * (1.0 - p).ln())
        .exp()
    };
    let (mut lo, mut below) = (0, 0.0);
    while below + pmf(lo) <= tail {
        below += pmf(lo);
        lo += 1;
    }
    let (mut hi, mut above) = (n, 0.0);
    while above + pmf(hi) <= tail {
        above += pmf(hi);
        hi -= 1;
    }
    (lo, hi)
}

/// Every Redis value and field, and every message of the requests and
/// orders topics, that holds `needle`.
async fn places_holding(stack: &Stack, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut con = stack.redis_con().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .expect("KEYS");
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut con)
            .await
            .expect("TYPE");
        let values: Vec<String> = match kind.as_str() {
            "hash" => redis::cmd("HGETALL").arg(&key).query_async(&mut con).await,
            "string" => redis::cmd("GET")
                .arg(&key)
                .query_async::<String>(&mut con)
                .await
                .map(|v| vec![v]),
            "zset" => {
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut con)
                    .await
            }
            "set" => redis::cmd("SMEMBERS").arg(&key).query_async(&mut con).await,
            "list" => {
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut con)
                    .await
            }
            _ => Ok(Vec::new()),
        }
        .unwrap_or_else(|e| panic!("read {key}: {e}"));
        if key.contains(needle) || values.iter().any(|v| v.contains(needle)) {
            found.push(format!("redis {key}"));
        }
    }
    for topic in [&stack.topics.requests, &stack.topics.orders] {
        for m in read_topic(stack, topic, 1, Duration::from_secs(60)).await {
            if String::from_utf8_lossy(m.payload().unwrap_or_default()).contains(needle) {
                found.push(format!("{topic} {}/{}", m.partition(), m.offset()));
            }
        }
    }
    found
}

/// Lottery draws nobody can predict. Under the old scheme a draw was
/// `draw_point(campaign id, request id)` and request ids derive from the
/// client's Idempotency-Keys, so a client could search keys offline until
/// each one won. Twenty users do exactly that: 100 keys each, every one a
/// winner under the old scheme, 2,000 draws on a lottery at win_rate 0.1
/// with stock for all of them (one over HTTP, which derives the request id
/// from the key the same way; the rest straight to Kafka). With the draw
/// secret unknown they win like anyone: within the two-sided 99.9 %
/// binomial interval around 200 (all 2,000 would win under the old
/// scheme), and exactly the draws the secret gives. While the campaign is
/// open its view shows the commitment only, and the secret is in no Redis
/// value and no topic message; closing reveals it (matching the
/// commitment), and a key that wins under the revealed secret is then
/// refused: the campaign is closed. A definition that still sends `seed`
/// is refused with a message that says draws use a per-campaign secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_idempotency_keys_win_no_more_than_chance_while_the_draw_secret_is_unknown() {
    const USERS: usize = 20;
    const KEYS_PER_USER: usize = 100;
    const N: usize = USERS * KEYS_PER_USER;
    const RATE: f64 = 0.1;
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let producer = stack.producer();

    // The public seed is gone, and saying so is the answer.
    let seeded = api
        .post_campaign(&campaign_body(
            &format!("seeded-{}", token(6)),
            10,
            json!({ "kind": "lottery", "price": 0, "seed": "my-seed" }),
        ))
        .await;
    assert_eq!(seeded.status, 400, "{}", seeded.body);
    let why = seeded.body["detail"].as_str().unwrap_or_default();
    assert!(
        why.contains("\"seed\"") && why.contains("per-campaign secret"),
        "{why}"
    );

    let cid = format!("odds-{}", token(6));
    let open = create(
        &api,
        &campaign_body(
            &cid,
            N as u64,
            json!({
                "kind": "lottery",
                "price": 0,
                "win_rate": RATE,
                "per_user_limit": KEYS_PER_USER,
            }),
        ),
        CampaignState::Active,
    )
    .await;
    let secret = DrawSecret::derive(&draw_key(&stack), &cid);
    assert_eq!(open.draw_commitment, Some(secret.commitment()), "{open:?}");
    assert_eq!(open.draw_secret, None, "{open:?}");

    // Keys searched offline: each wins under the old public-seed scheme.
    let mut picks: Vec<(String, String, String)> = Vec::with_capacity(N); // (rid, user, key)
    for u in 0..USERS {
        let user = format!("mallory-{u:02}");
        let mut i = 0u64;
        while picks.iter().filter(|p| p.1 == user).count() < KEYS_PER_USER {
            let key = format!("key-{i}");
            i += 1;
            let rid = request_id_for_key(&user, &cid, &key);
            if draw_point(&cid, &rid) < RATE {
                picks.push((rid, user.clone(), key));
            }
        }
    }
    // Over HTTP, ingest derives the request id from the key as above.
    let (rid0, user0, key0) = &picks[0];
    let d = api.purchase_decided(&cid, user0, key0, None).await;
    assert_eq!(&d.request_id, rid0, "ingest's request id for the key");
    assert!(
        matches!(d.status, DecisionStatus::Won | DecisionStatus::Lost),
        "{d:?}"
    );
    let rest: Vec<(String, String)> = picks[1..]
        .iter()
        .map(|(rid, user, _)| (rid.clone(), user.clone()))
        .collect();
    produce_purchases(&stack, &producer, &cid, &rest).await;
    wait_decided(&api, &cid, N as u64, Duration::from_secs(300)).await;

    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        N,
        Duration::from_secs(120),
    )
    .await;
    let mut wins = 0;
    let mut off = Vec::new();
    for (rid, user, _) in &picks {
        let d = log
            .first(rid)
            .unwrap_or_else(|| panic!("no decision for {rid}"));
        assert_eq!(&d.user_id, user);
        let won = match d.status {
            DecisionStatus::Won => true,
            DecisionStatus::Lost => false,
            other => panic!("a draw decided {other:?}: {d:?}"),
        };
        wins += usize::from(won);
        if won != (secret.point(rid) < RATE) {
            off.push(format!("{rid}: won={won}, point {}", secret.point(rid)));
        }
    }
    let (lo, hi) = binomial_interval(N, RATE, 0.999);
    eprintln!(
        "{N} adversarial draws at {RATE}: {wins} won (99.9 % interval {lo}..={hi}; {N} under the \
         public seed)"
    );
    assert!(
        (lo..=hi).contains(&wins),
        "{wins} of {N} keys chosen to win under the public seed won; chance gives {lo}..={hi}"
    );
    // And each draw is the one the secret gives.
    assert_none("draws vs the (unknown) draw secret", &off);

    // No client and no topic reader can learn the secret while it is open.
    let holders = places_holding(&stack, &secret.to_hex()).await;
    assert!(
        holders.is_empty(),
        "the draw secret is readable in {holders:?}"
    );

    // Closed: revealed, and worth nothing any more.
    let closed = close(&api, &cid).await;
    assert_eq!(revealed(&stack, &open, &closed), secret);
    let late_key = (0..)
        .map(|i| format!("late-{i}"))
        .find(|k| secret.point(&request_id_for_key("late", &cid, k)) < RATE)
        .expect("a winning key");
    tokio::time::sleep(Duration::from_millis(300)).await; // past the fast-path cache
    let late = api.purchase_decided(&cid, "late", &late_key, None).await;
    assert_eq!(
        (late.status, late.reason),
        (DecisionStatus::NotActive, Some(RefusalReason::Closed)),
        "{late:?}"
    );
    drop(all);
}

/// A forged `confirmed` event: a free prize "won" by `request_id`.
fn forged_win(cid: &str, request_id: &str, user: &str, prize: &str) -> Vec<u8> {
    let e = OrderEvent::Confirmed(Reserved {
        schema_version: 1,
        request_id: request_id.to_owned(),
        order_id: order_id_for(request_id),
        campaign_id: cid.to_owned(),
        user_id: user.to_owned(),
        quantity: 1,
        price: 0,
        requested_at_ms: now_ms(),
        decided_at_ms: now_ms(),
        expires_at_ms: now_ms(),
        prize_id: Some(prize.to_owned()),
        item_name: "Gold".to_owned(),
        award_type: Default::default(),
    });
    serde_json::to_vec(&e).expect("serialise")
}

/// `seckill verify-draws <cid>` with the stack's settings.
async fn verify_draws(stack: &Stack, api: &Api, cid: &str) -> common::seckill::Exit {
    stack
        .seckill_exit(&["verify-draws", "--api", &api.base, cid], &[], 180)
        .await
}

/// The orders of `cid` in the store once there are `n` of them.
async fn stored(api: &Api, cid: &str, n: usize) -> Vec<seckill_schemas::OrderView> {
    eventually(
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let o = all_orders(api, cid).await;
            if o.len() >= n {
                Ok(o)
            } else {
                Err(o.len())
            }
        },
    )
    .await
    .unwrap_or_else(|got| panic!("{cid}: {got} orders in the store, want {n}"))
}

/// `seckill verify-draws` on a renormalizing lottery whose prize table runs
/// down and back up: 400 draws sell both prizes out, three priced wins are
/// cancelled (their units go back to the prize) and two units are added to
/// the free prize, then 100 more draws take them. Before the close the
/// command refuses (the secret is not revealed yet). After it, it checks
/// every won and lost draw against the revealed secret and every stored
/// order, and passes. A stored order's prize changed in the SQLite store
/// makes it fail naming that order; put back, it passes again. A winning
/// decision forged onto the orders topic (for a request whose point loses)
/// makes it fail naming that request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_draws_passes_after_close_and_names_a_tampered_order_and_a_forged_win() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let producer = stack.producer();
    let cid = format!("verify-{}", token(6));
    create(
        &api,
        &campaign_body(
            &cid,
            3 + 100,
            json!({
                "kind": "lottery",
                "price": 500,
                "strategy": "renormalize",
                "prizes": [
                    {"id": "gold", "name": "Gold", "stock": 3, "probability": 0.2, "price": 0},
                    {"id": "silver", "name": "Silver", "stock": 100, "probability": 0.3},
                ],
            }),
        ),
        CampaignState::Active,
    )
    .await;
    let draws = |prefix: &str, n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| (new_request_id(), format!("{prefix}-{i:04}")))
            .collect()
    };
    let first = draws("a", 400);
    produce_purchases(&stack, &producer, &cid, &first).await;
    wait_decided(&api, &cid, 400, Duration::from_secs(120)).await;
    let v = api.campaign(&cid).await.expect("view");
    assert_eq!(v.stock.available, 0, "both prizes sold out: {:?}", v.stock);

    // Three silver wins cancelled: their units go back to silver.
    let silver: Vec<_> = stored(&api, &cid, 103)
        .await
        .into_iter()
        .filter(|o| o.prize_id.as_deref() == Some("silver"))
        .take(3)
        .collect();
    assert_eq!(silver.len(), 3);
    for o in &silver {
        let c = order_command(&api, &o.order_id, &o.user_id, "cancel", None).await;
        assert!(c.is_ok("cancelled"), "{}", c.body);
    }
    // Two more gold units.
    let r = api
        .post(
            &format!("/v1/campaigns/{cid}/stock"),
            &json!({"quantity": 2, "prize_id": "gold"}),
            &[],
        )
        .await
        .expect("add stock");
    assert_eq!(r.status, 200, "{}", r.body);
    let second = draws("b", 100);
    produce_purchases(&stack, &producer, &cid, &second).await;
    wait_decided(&api, &cid, 500, Duration::from_secs(120)).await;
    let v = api.campaign(&cid).await.expect("view");
    assert_eq!(
        v.stock.available, 0,
        "the returned units were won: {:?}",
        v.stock
    );

    // Not before the close.
    let early = verify_draws(&stack, &api, &cid).await;
    assert!(
        !early.success,
        "verify-draws passed while open:\n{}",
        early.stdout
    );
    assert!(
        early
            .log
            .contains("revealed only once the campaign is closed"),
        "{}",
        early.log
    );

    let closed = close(&api, &cid).await;
    let secret =
        DrawSecret::from_hex(closed.draw_secret.as_deref().expect("revealed")).expect("hex");
    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        500,
        Duration::from_secs(60),
    )
    .await;
    let statuses: Vec<DecisionStatus> = first
        .iter()
        .chain(&second)
        .map(|(rid, _)| log.first(rid).expect("decided").status)
        .collect();
    let wins = statuses
        .iter()
        .filter(|s| **s == DecisionStatus::Won)
        .count();
    let losses = statuses
        .iter()
        .filter(|s| **s == DecisionStatus::Lost)
        .count();
    assert_eq!(wins, 3 + 100 + 3 + 2, "every unit won, returned ones again");
    let orders = stored(&api, &cid, wins).await;
    assert_eq!(orders.len(), wins);

    let ok = verify_draws(&stack, &api, &cid).await;
    assert!(
        ok.success,
        "verify-draws failed:\n{}\n{}",
        ok.stdout, ok.log
    );
    let j = last_json(&ok.stdout);
    assert_eq!(j["draws_checked"], json!(wins + losses), "{j}");
    assert_eq!(j["wins"], json!(wins), "{j}");
    assert_eq!(j["stored_orders_checked"], json!(wins), "{j}");
    assert_eq!(j["mismatches"], json!(0), "{j}");
    assert_eq!(j["secret"], json!(secret.to_hex()), "{j}");

    // Tampered store: a silver order made gold.
    let victim = orders
        .iter()
        .find(|o| o.prize_id.as_deref() == Some("silver"))
        .expect("a silver order")
        .order_id
        .clone();
    let set_prize = |prize: &str| {
        let db = rusqlite::Connection::open(&stack.store_path).expect("open the store");
        db.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        let n = db
            .execute(
                "UPDATE orders SET prize_id = ?1 WHERE order_id = ?2",
                rusqlite::params![prize, victim],
            )
            .expect("update the order");
        assert_eq!(n, 1);
    };
    set_prize("gold");
    let bad = verify_draws(&stack, &api, &cid).await;
    assert!(!bad.success, "a tampered order passed:\n{}", bad.stdout);
    let j = last_json(&bad.stdout);
    assert_eq!(j["mismatches"], json!(1), "{j}");
    assert!(
        bad.stdout.contains(&format!(
            "mismatch: stored order {victim} holds prize Some(\"gold\")"
        )),
        "{}",
        bad.stdout
    );
    set_prize("silver");
    let again = verify_draws(&stack, &api, &cid).await;
    assert!(again.success, "restored, it fails:\n{}", again.stdout);

    // A forged win on the orders topic, for a request whose point loses.
    let forged = (0..)
        .map(|i| format!("forged-{i}"))
        .find(|r| secret.point(r) >= 0.5)
        .expect("a losing request id");
    producer
        .send(
            &stack.topics.orders,
            Some(&cid),
            &forged_win(&cid, &forged, "forger", "gold"),
        )
        .await;
    stored(&api, &cid, wins + 1).await;
    let bad = verify_draws(&stack, &api, &cid).await;
    assert!(!bad.success, "a forged win passed:\n{}", bad.stdout);
    // Two findings: the draw in the log, and the order the sink stored
    // for it.
    let j = last_json(&bad.stdout);
    assert_eq!(j["mismatches"], json!(2), "{j}");
    assert!(
        bad.stdout.lines().any(|l| l.starts_with("mismatch: offset")
            && l.contains(&format!("request {forged} (user forger)"))
            && l.contains("gives a loss")),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stdout.lines().any(|l| l.starts_with(&format!(
            "mismatch: stored order {} is the prize of draw {forged}",
            order_id_for(&forged)
        ))),
        "{}",
        bad.stdout
    );
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
