//! The stock-bucket part of the decision script against a real
//! redis-server this test starts: parking, the borrowing round through
//! borrow and transfer commands, and that every step is idempotent.
//!
//! Each bucket is decided under its own key (`hot`, `hot#1`, ...), as the
//! processor does; the commands between them are fed by hand here, in the
//! order the processors would send them.

use std::time::Duration;

mod support;
use support::{start_redis, Redis};

use chrono::{Duration as ChronoDuration, Utc};
use redis::aio::ConnectionManager;
use seckill_processors::Decider;
use seckill_schemas::state::Answer;
use seckill_schemas::{
    CampaignAction, CampaignCommand, CampaignKind, CampaignOutcome, CampaignSpec, DecisionStatus,
    KeyLayout, PurchaseRequested, RefusalReason, RequestEvent, UpsertCampaign,
};

struct Buckets {
    _redis: Redis,
    con: ConnectionManager,
    decider: Decider,
    spec: CampaignSpec,
}

fn spec(id: &str, stock: u64, buckets: u32, limit: u32) -> CampaignSpec {
    let now = Utc::now();
    CampaignSpec {
        id: id.into(),
        name: "hot".into(),
        kind: CampaignKind::Sale,
        stock,
        per_user_limit: limit,
        starts_at: now - ChronoDuration::seconds(5),
        ends_at: now + ChronoDuration::hours(1),
        payment_timeout_secs: 300,
        price: 100,
        buckets: Some(buckets),
        ..CampaignSpec::default()
    }
}

fn key(id: &str, b: u32) -> String {
    seckill_schemas::bucket_key(id, b)
}

fn buy(id: &str, request: &str, user: &str) -> RequestEvent {
    buy_q(id, request, user, 1)
}

fn buy_q(id: &str, request: &str, user: &str, quantity: u32) -> RequestEvent {
    RequestEvent::PurchaseRequested(PurchaseRequested {
        schema_version: 1,
        request_id: request.into(),
        campaign_id: id.into(),
        user_id: user.into(),
        quantity,
        requested_at_ms: Some(1_000 + request.len() as i64),
        attributes: None,
    })
}

fn command(id: &str, request: &str, action: CampaignAction) -> RequestEvent {
    RequestEvent::CampaignCommand(CampaignCommand {
        schema_version: 1,
        request_id: request.into(),
        campaign_id: id.into(),
        action,
        requested_at_ms: None,
        auth: None,
    })
}

/// The borrow a `b|...` record asks for, as the processor builds it.
fn borrow_of(id: &str, from: u32, rec: &Answer) -> (u32, RequestEvent) {
    let Answer::Borrow {
        to,
        want,
        round,
        ask,
    } = rec
    else {
        panic!("expected an ask, got {rec:?}")
    };
    (
        *to,
        command(
            id,
            &format!("borrow.{id}.{from}.{round}.{ask}"),
            CampaignAction::Borrow {
                from,
                want: *want,
                round: *round,
                ask: *ask,
            },
        ),
    )
}

/// The transfer an `l|...` record answers with.
fn transfer_of(id: &str, lender: u32, rec: &Answer) -> (u32, RequestEvent) {
    let Answer::Lend {
        to,
        units,
        round,
        ask,
    } = rec
    else {
        panic!("expected a lend, got {rec:?}")
    };
    (
        *to,
        command(
            id,
            &format!("transfer.{id}.{to}.{round}.{ask}"),
            CampaignAction::Transfer {
                from: lender,
                units: *units,
                round: *round,
                ask: *ask,
            },
        ),
    )
}

/// (request, status) of every served record.
fn served(records: &[Answer]) -> Vec<(String, DecisionStatus)> {
    records
        .iter()
        .filter_map(|r| match r {
            Answer::Served {
                request_id,
                decision,
                ..
            } => match &**decision {
                Answer::Purchase { status, .. } => Some((request_id.clone(), *status)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn asks(records: &[Answer]) -> Vec<&Answer> {
    records
        .iter()
        .filter(|r| matches!(r, Answer::Borrow { .. }))
        .collect()
}

fn lends(records: &[Answer]) -> Vec<&Answer> {
    records
        .iter()
        .filter(|r| matches!(r, Answer::Lend { .. }))
        .collect()
}

impl Buckets {
    async fn new(spec: CampaignSpec) -> Self {
        let redis = start_redis().await;
        let con = seckill_processors::connect_redis(&redis.url)
            .await
            .expect("connect to the test redis-server");
        let mut b = Self {
            _redis: redis,
            con,
            decider: Decider::new("t", b"bucket-test-draw-key".to_vec()),
            spec,
        };
        for bucket in 0..b.spec.bucket_count() {
            let create = RequestEvent::UpsertCampaign(UpsertCampaign {
                schema_version: 1,
                request_id: format!("create.{bucket}"),
                campaign: b.spec.clone(),
                requested_at_ms: None,
                auth: None,
            });
            let out = b.run(bucket, &[create], false).await;
            assert!(
                matches!(
                    out[0][0],
                    Answer::Campaign {
                        outcome: CampaignOutcome::Created,
                        ..
                    }
                ),
                "{out:?}"
            );
        }
        b
    }

    /// Decides `events` in bucket `bucket`; `known`: the campaign exists
    /// (the processor passes its stored definition).
    async fn run(&mut self, bucket: u32, events: &[RequestEvent], known: bool) -> Vec<Vec<Answer>> {
        let refs: Vec<&RequestEvent> = events.iter().collect();
        let spec = known.then(|| self.spec.clone());
        self.decider
            .decide(
                &mut self.con,
                &key(&self.spec.id, bucket),
                spec.as_ref(),
                &refs,
            )
            .await
            .expect("the decision script answers")
    }

    /// Decides one event in `bucket`, twice (a redelivery): the second
    /// answer must repeat the first and change nothing.
    async fn once(&mut self, bucket: u32, event: RequestEvent) -> Vec<Answer> {
        let first = self.run(bucket, std::slice::from_ref(&event), true).await;
        let stock = self.all_stock().await;
        let again = self.run(bucket, &[event], true).await;
        assert_eq!(first, again, "a redelivery answers the same");
        assert_eq!(
            stock,
            self.all_stock().await,
            "a redelivery changes nothing"
        );
        first.into_iter().next().expect("one answer")
    }

    /// (total, available, reserved, paid) of one bucket.
    async fn stock(&mut self, bucket: u32) -> (i64, i64, i64, i64) {
        let k = KeyLayout::new("t").bucket(&self.spec.id, bucket);
        redis::cmd("HMGET")
            .arg(&k.stock)
            .arg(&["total", "available", "reserved", "paid"])
            .query_async(&mut self.con)
            .await
            .expect("HMGET stock")
    }

    async fn all_stock(&mut self) -> Vec<(i64, i64, i64, i64)> {
        let mut out = Vec::new();
        for b in 0..self.spec.bucket_count() {
            out.push(self.stock(b).await);
        }
        out
    }

    /// Every bucket conserved; the totals add up to `units` (nothing in
    /// transit).
    async fn conserved(&mut self, units: i64) {
        let all = self.all_stock().await;
        for (b, (t, a, r, p)) in all.iter().enumerate() {
            assert_eq!(a + r + p, *t, "bucket {b}: {all:?}");
            assert!(*a >= 0, "bucket {b}: {all:?}");
        }
        assert_eq!(all.iter().map(|s| s.0).sum::<i64>(), units, "{all:?}");
    }
}

fn status(a: &[Answer]) -> Option<DecisionStatus> {
    match a.first() {
        Some(Answer::Purchase { status, .. }) => Some(*status),
        _ => None,
    }
}

/// Bucket 0 drains, parks its purchases in order, asks bucket 1 then
/// bucket 2, gets a unit from each, and decides its parked purchases as
/// the units come; a later round finds nothing anywhere and answers
/// sold_out. Every command is decided twice and moves units once.
#[tokio::test]
async fn a_drained_bucket_borrows_from_each_sibling_in_turn_and_units_move_once() {
    let mut b = Buckets::new(spec("hot", 4, 3, 2)).await;
    // Shares: 2, 1, 1.
    assert_eq!(
        b.all_stock().await,
        [(2, 2, 0, 0), (1, 1, 0, 0), (1, 1, 0, 0)]
    );
    let batch = [
        buy("hot", "r1", "u1"),
        buy("hot", "r2", "u2"),
        buy("hot", "r3", "u3"),
        buy("hot", "r4", "u1"),
    ];
    let out = b.run(0, &batch, true).await;
    assert_eq!(status(&out[0]), Some(DecisionStatus::Reserved));
    assert_eq!(status(&out[1]), Some(DecisionStatus::Reserved));
    // r3 parks and opens a round asking bucket 1; r4 parks behind it.
    assert!(matches!(out[2][0], Answer::Held { .. }), "{:?}", out[2]);
    assert_eq!(asks(&out[2]).len(), 1, "{:?}", out[2]);
    assert!(matches!(out[3][..], [Answer::Held { .. }]), "{:?}", out[3]);
    // Redelivered: the same answers (the ask included), nothing moves.
    assert_eq!(out, b.run(0, &batch, true).await);
    b.conserved(4).await;

    let (to, borrow) = borrow_of("hot", 0, asks(&out[2])[0]);
    assert_eq!(to, 1);
    let lent = b.once(1, borrow).await;
    assert_eq!(b.stock(1).await, (0, 0, 0, 0), "bucket 1 lent its unit");
    let (to, transfer) = transfer_of("hot", 1, lends(&lent)[0]);
    assert_eq!(to, 0);
    let got = b.once(0, transfer).await;
    assert_eq!(served(&got), [("r3".to_owned(), DecisionStatus::Reserved)]);
    // r4 still waits: bucket 2 is asked next.
    let (to, borrow) = borrow_of("hot", 0, asks(&got)[0]);
    assert_eq!(to, 2);
    b.conserved(4).await;
    let lent = b.once(2, borrow).await;
    let (_, transfer) = transfer_of("hot", 2, lends(&lent)[0]);
    let got = b.once(0, transfer).await;
    assert_eq!(served(&got), [("r4".to_owned(), DecisionStatus::Reserved)]);
    assert!(asks(&got).is_empty(), "the round is over: {got:?}");
    b.conserved(4).await;
    assert_eq!(b.stock(0).await, (4, 0, 4, 0));

    // A redelivered purchase decided after it was parked repeats its
    // decision.
    let again = b.run(0, &[buy("hot", "r3", "u3")], true).await;
    assert_eq!(status(&again[0]), Some(DecisionStatus::Reserved));
    // u1 holds 2 (its limit): refused at once, not parked.
    let out = b.run(0, &[buy("hot", "r7", "u1")], true).await;
    assert_eq!(status(&out[0]), Some(DecisionStatus::LimitExceeded));

    // Nothing left anywhere: a new round asks both siblings, each lends
    // nothing, and only then is r5 sold out.
    let out = b.run(0, &[buy("hot", "r5", "u5")], true).await;
    let (to, borrow) = borrow_of("hot", 0, asks(&out[0])[0]);
    assert_eq!(to, 1);
    let lent = b.once(1, borrow).await;
    let (_, transfer) = transfer_of("hot", 1, lends(&lent)[0]);
    let got = b.once(0, transfer).await;
    assert!(served(&got).is_empty(), "{got:?}");
    let (to, borrow) = borrow_of("hot", 0, asks(&got)[0]);
    assert_eq!(to, 2);
    let lent = b.once(2, borrow).await;
    let (_, transfer) = transfer_of("hot", 2, lends(&lent)[0]);
    let got = b.once(0, transfer).await;
    assert_eq!(served(&got), [("r5".to_owned(), DecisionStatus::SoldOut)]);
    assert!(asks(&got).is_empty());
    b.conserved(4).await;
}

/// A bucket with parked purchases lends nothing, not even the units its
/// first waiting purchase is short of; a close decides the parked ones
/// (not_active, closed); a transfer arriving after the close still adds
/// its units.
#[tokio::test]
async fn a_waiting_bucket_lends_nothing_and_a_close_answers_its_parked_purchases() {
    // Shares 2 and 1.
    let mut b = Buckets::new(spec("hot2", 3, 2, 2)).await;
    let out = b
        .run(
            0,
            &[buy_q("hot2", "a1", "u1", 2), buy("hot2", "a2", "u2")],
            true,
        )
        .await;
    assert_eq!(status(&out[0]), Some(DecisionStatus::Reserved));
    let ask0 = asks(&out[1])[0].clone();
    // Bucket 1 has 1 unit; v1 wants 2: parked, asking bucket 0.
    let out = b.run(1, &[buy_q("hot2", "b1", "v1", 2)], true).await;
    let ask1 = asks(&out[0])[0].clone();
    assert_eq!(b.stock(1).await, (1, 1, 0, 0));
    // Each asks the other; each is waiting, so each lends nothing (bucket
    // 1 keeps its unit for v1).
    let (_, borrow) = borrow_of("hot2", 0, &ask0);
    let lent = b.once(1, borrow).await;
    assert!(
        matches!(lends(&lent)[0], Answer::Lend { units: 0, .. }),
        "{lent:?}"
    );
    let (_, late_transfer) = transfer_of("hot2", 1, lends(&lent)[0]);
    let (_, borrow) = borrow_of("hot2", 1, &ask1);
    let lent = b.once(0, borrow).await;
    assert!(
        matches!(lends(&lent)[0], Answer::Lend { units: 0, .. }),
        "{lent:?}"
    );

    // Bucket 0 is closed while a2 waits: a2 is refused as closed.
    let close = command("hot2", "close.0", CampaignAction::Close);
    let closed = b.once(0, close).await;
    let s = served(&closed);
    assert_eq!(s, [("a2".to_owned(), DecisionStatus::NotActive)]);
    let reason = closed.iter().find_map(|r| match r {
        Answer::Served { decision, .. } => match &**decision {
            Answer::Purchase { reason, .. } => *reason,
            _ => None,
        },
        _ => None,
    });
    assert_eq!(reason, Some(RefusalReason::Closed));
    // The answer to its old ask comes late: no purchase waits any more.
    let got = b.once(0, late_transfer).await;
    assert!(served(&got).is_empty() && asks(&got).is_empty(), "{got:?}");
    assert_eq!(b.stock(1).await, (1, 1, 0, 0));
    b.conserved(3).await;
}

/// A campaign of one bucket is the campaign of old: no bucket fields in
/// its meta, and sold out at once.
#[tokio::test]
async fn one_bucket_sells_out_at_once_as_before() {
    let mut b = Buckets::new(spec("cool", 1, 1, 1)).await;
    let out = b
        .run(0, &[buy("cool", "c1", "u1"), buy("cool", "c2", "u2")], true)
        .await;
    assert_eq!(status(&out[0]), Some(DecisionStatus::Reserved));
    assert_eq!(status(&out[1]), Some(DecisionStatus::SoldOut));
    let meta: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(KeyLayout::new("t").campaign("cool").meta)
        .arg(&["buckets", "bucket"])
        .query_async(&mut b.con)
        .await
        .expect("HMGET meta");
    assert_eq!(meta, [None, None]);
}

/// After a round in which no sibling had a unit, a drained bucket answers
/// sold_out at once for a second (no parking, no new round through the
/// log for every later batch of a sold-out flood), then asks again.
#[tokio::test]
async fn a_bucket_that_found_nothing_anywhere_answers_sold_out_at_once_for_a_while() {
    let mut b = Buckets::new(spec("dry", 2, 2, 1)).await;
    // Bucket 1 sells its unit to its own buyer first.
    let out = b.run(1, &[buy("dry", "r0", "u0")], true).await;
    assert_eq!(status(&out[0]), Some(DecisionStatus::Reserved));
    let out = b
        .run(0, &[buy("dry", "r1", "u1"), buy("dry", "r2", "u2")], true)
        .await;
    assert_eq!(status(&out[0]), Some(DecisionStatus::Reserved));
    assert!(matches!(out[1][0], Answer::Held { .. }), "{:?}", out[1]);
    let (to, borrow) = borrow_of("dry", 0, asks(&out[1])[0]);
    assert_eq!(to, 1);
    let lent = b.once(1, borrow).await;
    let (_, transfer) = transfer_of("dry", 1, lends(&lent)[0]);
    let got = b.once(0, transfer).await;
    assert_eq!(served(&got), [("r2".to_owned(), DecisionStatus::SoldOut)]);

    // Within the window: sold out at once, nothing parked, nothing asked.
    let out = b.run(0, &[buy("dry", "r3", "u3")], true).await;
    assert_eq!(status(&out[0]), Some(DecisionStatus::SoldOut), "{out:?}");
    assert!(asks(&out[0]).is_empty(), "{out:?}");

    // After it: the next purchase short of units parks and asks again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let out = b.run(0, &[buy("dry", "r4", "u4")], true).await;
    assert!(matches!(out[0][0], Answer::Held { .. }), "{out:?}");
    assert_eq!(asks(&out[0]).len(), 1, "{out:?}");
    b.conserved(2).await;
}
