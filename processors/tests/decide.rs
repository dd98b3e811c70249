//! The decision script against a real redis-server that this test starts:
//! every operation, and the invariants the script promises.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

mod support;
use support::{start_redis, Redis};

use chrono::{Duration as ChronoDuration, Utc};
use redis::aio::ConnectionManager;
use seckill_processors::Decider;
use seckill_schemas::state::Answer as Outcome;
use seckill_schemas::state::{
    self, Answer, LookupKind, OrderRecord, Payment, StockCounters, StoredOrder,
};
use seckill_schemas::RefusalReason;
use seckill_schemas::{order_id_for, DrawSecret};
use seckill_schemas::{
    CampaignAction, CampaignCommand, CampaignKind, CampaignOutcome, CampaignSpec, DecisionStatus,
    DrawStrategy, ExpireDue, KeyLayout, OrderAction, OrderCommand, OrderStatus, PrizeSpec,
    PurchaseRequested, RequestEvent, UpsertCampaign,
};

/// The key the test deciders derive draw secrets from.
const DRAW_KEY: &[u8] = b"decide-test-draw-key";

/// A real Redis plus the decider, and the campaign specs it has created.
struct Bench {
    _redis: Redis,
    con: ConnectionManager,
    decider: Decider,
    specs: HashMap<String, CampaignSpec>,
}

impl Bench {
    async fn new() -> Self {
        let redis = start_redis().await;
        let con = seckill_processors::connect_redis(&redis.url).await.unwrap();
        Self {
            _redis: redis,
            con,
            decider: Decider::new("t", DRAW_KEY.to_vec()),
            specs: Default::default(),
        }
    }

    async fn run(&mut self, cid: &str, events: &[RequestEvent]) -> Vec<Vec<Outcome>> {
        let refs: Vec<&RequestEvent> = events.iter().collect();
        let spec = self.specs.get(cid).cloned();
        self.decider
            .decide(&mut self.con, cid, spec.as_ref(), &refs)
            .await
            .unwrap()
    }

    async fn create(&mut self, spec: CampaignSpec) -> CampaignOutcome {
        let id = spec.id.clone();
        let out = self.run(&id, &[create_event(&spec)]).await;
        self.specs.entry(id).or_insert(spec);
        match &out[0][0] {
            Outcome::Campaign { outcome, .. } => *outcome,
            o => panic!("{o:?}"),
        }
    }

    async fn stock(&mut self, id: &str) -> (i64, i64, i64, i64) {
        let k = KeyLayout::new("t").campaign(id);
        redis::cmd("HMGET")
            .arg(&k.stock)
            .arg(&["total", "available", "reserved", "paid"])
            .query_async(&mut self.con)
            .await
            .unwrap()
    }
}

fn sale(id: &str, stock: u64, limit: u32, starts_in_secs: i64) -> CampaignSpec {
    let now = Utc::now();
    CampaignSpec {
        id: id.into(),
        name: "test".into(),
        kind: CampaignKind::Sale,
        stock,
        per_user_limit: limit,
        starts_at: now + ChronoDuration::seconds(starts_in_secs),
        ends_at: now + ChronoDuration::hours(1),
        payment_timeout_secs: 300,
        price: 1999,
        ..CampaignSpec::default()
    }
}

fn create_event(spec: &CampaignSpec) -> RequestEvent {
    RequestEvent::UpsertCampaign(UpsertCampaign {
        schema_version: 1,
        request_id: format!("create-{}-{}", spec.id, spec.stock),
        campaign: spec.clone(),
        requested_at_ms: None,
        auth: None,
    })
}

fn buy(id: &str, request: &str, user: &str, quantity: u32) -> RequestEvent {
    RequestEvent::PurchaseRequested(PurchaseRequested {
        schema_version: 1,
        request_id: request.into(),
        campaign_id: id.into(),
        user_id: user.into(),
        quantity,
        requested_at_ms: None,
        attributes: None,
    })
}

/// A pay (with the reference `ref-<request>`) or a cancel.
fn order_cmd(
    id: &str,
    request: &str,
    order: &str,
    user: &str,
    action: OrderAction,
) -> RequestEvent {
    let payment_ref = (action == OrderAction::Pay).then(|| format!("ref-{request}"));
    order_cmd_ref(id, request, order, user, action, payment_ref.as_deref())
}

fn order_cmd_ref(
    id: &str,
    request: &str,
    order: &str,
    user: &str,
    action: OrderAction,
    payment_ref: Option<&str>,
) -> RequestEvent {
    RequestEvent::OrderCommand(OrderCommand {
        schema_version: 1,
        request_id: request.into(),
        campaign_id: id.into(),
        order_id: order.into(),
        user_id: user.into(),
        action,
        requested_at_ms: None,
        payment_ref: payment_ref.map(str::to_owned),
        auth: None,
    })
}

fn admin(id: &str, request: &str, action: CampaignAction) -> RequestEvent {
    RequestEvent::CampaignCommand(CampaignCommand {
        schema_version: 1,
        request_id: request.into(),
        campaign_id: id.into(),
        action,
        requested_at_ms: None,
        auth: None,
    })
}

fn status(o: &[Outcome]) -> DecisionStatus {
    match &o[0] {
        Outcome::Purchase { status, .. } => *status,
        o => panic!("expected a purchase outcome, got {o:?}"),
    }
}

fn order_of(o: &[Outcome]) -> String {
    match &o[0] {
        Outcome::Purchase {
            order_id: Some(id), ..
        } => id.clone(),
        o => panic!("expected an order, got {o:?}"),
    }
}

#[tokio::test]
async fn sells_exactly_the_stock_and_repeats_decisions() {
    let mut b = Bench::new().await;
    assert_eq!(
        b.create(sale("c1", 3, 1, -1)).await,
        CampaignOutcome::Created
    );
    let reqs: Vec<RequestEvent> = (0..5)
        .map(|i| buy("c1", &format!("r{i}"), &format!("u{i}"), 1))
        .collect();
    let first = b.run("c1", &reqs).await;
    let statuses: Vec<_> = first.iter().map(|o| status(o)).collect();
    use DecisionStatus::*;
    assert_eq!(
        statuses,
        vec![Reserved, Reserved, Reserved, SoldOut, SoldOut]
    );
    assert_eq!(b.stock("c1").await, (3, 0, 3, 0));
    // Redelivery of the whole batch: same answers, nothing changes.
    assert_eq!(first, b.run("c1", &reqs).await);
    assert_eq!(b.stock("c1").await, (3, 0, 3, 0));
}

#[tokio::test]
async fn enforces_the_per_user_limit_and_the_window() {
    let mut b = Bench::new().await;
    b.create(sale("c2", 100, 2, -1)).await;
    b.create(sale("c3", 100, 1, 3600)).await;
    let out = b
        .run(
            "c2",
            &[
                buy("c2", "a1", "alice", 1),
                buy("c2", "a2", "alice", 1),
                buy("c2", "a3", "alice", 1),
                buy("c2", "b1", "bob", 3),
            ],
        )
        .await;
    let s: Vec<_> = out.iter().map(|o| status(o)).collect();
    use DecisionStatus::*;
    assert_eq!(s, vec![Reserved, Reserved, LimitExceeded, LimitExceeded]);
    let out = b.run("c3", &[buy("c3", "e1", "carol", 1)]).await;
    assert!(
        matches!(&out[0][0], Outcome::Purchase { status: NotActive, reason, .. } if *reason == Some(RefusalReason::NotStarted))
    );
    let out = b.run("nope", &[buy("nope", "n1", "dave", 1)]).await;
    assert!(
        matches!(&out[0][0], Outcome::Purchase { status: NotActive, reason, .. } if *reason == Some(RefusalReason::UnknownCampaign))
    );
}

#[tokio::test]
async fn a_repeated_create_is_unchanged_and_a_different_one_conflicts() {
    let mut b = Bench::new().await;
    let first = sale("c4", 10, 1, -1);
    b.create(first.clone()).await;
    let mut same = create_event(&first);
    if let RequestEvent::UpsertCampaign(u) = &mut same {
        u.request_id = "again".into();
    }
    let mut different = create_event(&sale("c4", 11, 1, -1));
    if let RequestEvent::UpsertCampaign(u) = &mut different {
        u.request_id = "other".into();
    }
    let out = b.run("c4", &[same, different]).await;
    assert!(matches!(
        out[0][0],
        Outcome::Campaign {
            outcome: CampaignOutcome::Unchanged,
            ..
        }
    ));
    assert!(matches!(
        out[1][0],
        Outcome::Campaign {
            outcome: CampaignOutcome::Conflict,
            ..
        }
    ));
    assert_eq!(b.stock("c4").await, (10, 10, 0, 0));
}

#[tokio::test]
async fn survives_a_flushed_script_cache() {
    let mut b = Bench::new().await;
    b.create(sale("c5", 10, 1, -1)).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut b.con)
        .await
        .unwrap();
    let out = b.run("c5", &[buy("c5", "x1", "erin", 1)]).await;
    assert_eq!(status(&out[0]), DecisionStatus::Reserved);
}

#[tokio::test]
async fn pay_cancel_and_expiry_return_stock_once() {
    let mut b = Bench::new().await;
    let mut spec = sale("c6", 4, 1, -1);
    spec.payment_timeout_secs = 1;
    b.create(spec).await;
    let out = b
        .run(
            "c6",
            &[
                buy("c6", "r1", "u1", 1),
                buy("c6", "r2", "u2", 1),
                buy("c6", "r3", "u3", 1),
            ],
        )
        .await;
    let (o1, o2, o3) = (order_of(&out[0]), order_of(&out[1]), order_of(&out[2]));
    let out = b
        .run(
            "c6",
            &[
                order_cmd("c6", "p1", &o1, "u1", OrderAction::Pay),
                order_cmd("c6", "x2", &o2, "u2", OrderAction::Cancel),
                order_cmd("c6", "x3-wrong-user", &o3, "u1", OrderAction::Cancel),
            ],
        )
        .await;
    assert!(matches!(
        &out[0][0],
        Outcome::Transition {
            to: OrderStatus::Paid,
            ..
        }
    ));
    assert!(matches!(
        &out[1][0],
        Outcome::Transition {
            to: OrderStatus::Cancelled,
            ..
        }
    ));
    assert!(
        matches!(&out[2][0], Outcome::CommandRefused { reason, .. } if *reason == RefusalReason::NotOwner)
    );
    assert_eq!(b.stock("c6").await, (4, 2, 1, 1));

    // Past the deadline: a late pay expires the order and is refused; the
    // sweep then finds nothing; a second late pay changes nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sweep = RequestEvent::ExpireDue(ExpireDue {
        schema_version: 1,
        request_id: "s1".into(),
        campaign_id: "c6".into(),
    });
    let out = b
        .run(
            "c6",
            &[
                order_cmd("c6", "p3", &o3, "u3", OrderAction::Pay),
                sweep.clone(),
                order_cmd("c6", "p3b", &o3, "u3", OrderAction::Pay),
            ],
        )
        .await;
    assert!(matches!(
        &out[0][0],
        Outcome::Transition {
            to: OrderStatus::Expired,
            ..
        }
    ));
    assert!(
        matches!(&out[0][1], Outcome::CommandRefused { reason, .. } if *reason == RefusalReason::Expired)
    );
    assert!(out[1].is_empty(), "nothing left to expire: {:?}", out[1]);
    assert!(
        matches!(&out[2][0], Outcome::CommandRefused { reason, .. } if *reason == RefusalReason::Expired)
    );
    assert_eq!(b.stock("c6").await, (4, 3, 0, 1));

    // Cancelling a paid order and paying a cancelled one are refused.
    let out = b
        .run(
            "c6",
            &[
                order_cmd("c6", "x1", &o1, "u1", OrderAction::Cancel),
                order_cmd("c6", "p2", &o2, "u2", OrderAction::Pay),
            ],
        )
        .await;
    assert!(
        matches!(&out[0][0], Outcome::CommandRefused { reason, .. } if *reason == RefusalReason::AlreadyPaid)
    );
    assert!(
        matches!(&out[1][0], Outcome::CommandRefused { reason, .. } if *reason == RefusalReason::Cancelled)
    );
    assert_eq!(b.stock("c6").await, (4, 3, 0, 1));

    // The cancelled user may buy again; a sweep expires only what is due.
    let out = b.run("c6", &[buy("c6", "r4", "u2", 1), sweep]).await;
    assert_eq!(status(&out[0]), DecisionStatus::Reserved);
    assert!(out[1].is_empty());
}

/// The payments service pays: the owner check is the cancel's alone; the
/// reference is stored with the order; the same reference again repeats
/// the first pay's answer, another one is refused `already_paid`.
#[tokio::test]
async fn payments_confirm_orders_with_a_payment_ref() {
    use OrderAction::{Cancel, Pay};
    let mut b = Bench::new().await;
    b.create(sale("cp", 5, 1, -1)).await;
    let out = b
        .run(
            "cp",
            &[buy("cp", "r1", "alice", 1), buy("cp", "r2", "bob", 1)],
        )
        .await;
    let (o1, o2) = (order_of(&out[0]), order_of(&out[1]));
    // The last field of the records: it may hold the separator.
    let reference = "psp-42|2024 #7";

    // The caller is the payments service, not alice: accepted.
    let pay = |request: &str, caller: &str, r: &str| {
        order_cmd_ref("cp", request, &o1, caller, Pay, Some(r))
    };
    let (first, t) = b
        .run_at("cp", &[pay("pay-1", "payments-svc", reference)])
        .await;
    let Outcome::Transition {
        to: OrderStatus::Paid,
        order,
        decided_at_ms,
    } = &first[0][0]
    else {
        panic!("the payments service's pay was refused: {first:?}");
    };
    assert_eq!(first[0].len(), 1, "{first:?}");
    assert_eq!(
        (
            order.user_id.as_str(),
            order.payment_ref.as_deref(),
            *decided_at_ms
        ),
        ("alice", Some(reference), t)
    );
    assert_eq!(b.stock("cp").await, (5, 3, 1, 1));
    let k = KeyLayout::new("t").campaign("cp");
    let raw: String = redis::cmd("HGET")
        .arg(&k.orders)
        .arg(&o1)
        .query_async(&mut b.con)
        .await
        .expect("redis");
    let stored = StoredOrder::decode(&raw).expect("order record reads");
    assert_eq!(
        (stored.status, stored.payment.clone()),
        (
            OrderStatus::Paid,
            Some(Payment {
                paid_at_ms: t,
                payment_ref: reference.into(),
            })
        )
    );

    // The same reference later, under another request id and another
    // caller: the first pay's answer again (its time included), and
    // nothing moves.
    while redis_ms(&mut b.con).await <= t {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let again = b
        .run("cp", &[pay("pay-1-retry", "payments-svc-2", reference)])
        .await;
    assert_eq!(again, first, "a pay repeating the first answers as it did");
    assert_eq!(b.stock("cp").await, (5, 3, 1, 1));

    // Another reference, even one the first starts with, is another payment.
    let out = b
        .run(
            "cp",
            &[
                pay("pay-2", "payments-svc", "psp-43"),
                pay("pay-3", "payments-svc", "psp-42"),
                pay("pay-4", "payments-svc", &format!("{reference}|")),
            ],
        )
        .await;
    for o in &out {
        assert!(
            matches!(
                &o[..],
                [Outcome::CommandRefused {
                    reason: RefusalReason::AlreadyPaid,
                    ..
                }]
            ),
            "{o:?}"
        );
    }

    // A cancel stays the owner's: not bob's on alice's order, nor alice's
    // on bob's; alice's own on her paid order is refused already_paid.
    let out = b
        .run(
            "cp",
            &[
                order_cmd("cp", "x1-bob", &o1, "bob", Cancel),
                order_cmd("cp", "x2-alice", &o2, "alice", Cancel),
                order_cmd("cp", "x1-alice", &o1, "alice", Cancel),
            ],
        )
        .await;
    let reasons: Vec<_> = out
        .iter()
        .map(|o| match &o[..] {
            [Outcome::CommandRefused { reason, .. }] => *reason,
            o => panic!("{o:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            RefusalReason::NotOwner,
            RefusalReason::NotOwner,
            RefusalReason::AlreadyPaid
        ]
    );
    assert_eq!(b.stock("cp").await, (5, 3, 1, 1));
    assert_eq!(
        StoredOrder::decode(
            &redis::cmd("HGET")
                .arg(&k.orders)
                .arg(&o1)
                .query_async::<String>(&mut b.con)
                .await
                .expect("redis")
        )
        .expect("order record reads"),
        stored,
        "a refused command changed the paid order"
    );
}

/// After Redis lost a campaign, a repair writes back the orders the store
/// holds (as `seckill reconcile --repair` builds them: the reference from
/// the row, the pay time from its last change): a paid order keeps its
/// reference, so the same pay again still answers as the first one did
/// and another reference is still refused.
#[tokio::test]
async fn a_paid_order_restored_from_the_store_keeps_its_payment_ref() {
    use seckill_processors::{meta_fields, restore, CampaignImage};
    let mut b = Bench::new().await;
    let spec = sale("cr", 5, 1, -1);
    b.create(spec.clone()).await;
    let bought = b.run("cr", &[buy("cr", "r1", "alice", 1)]).await;
    let o1 = order_of(&bought[0]);
    let pay = |request: &str, r: &str| {
        order_cmd_ref(
            "cr",
            request,
            &o1,
            "payments-svc",
            OrderAction::Pay,
            Some(r),
        )
    };
    let first = b.run("cr", &[pay("pay-1", "psp-7")]).await;
    let Outcome::Transition {
        to: OrderStatus::Paid,
        order,
        decided_at_ms,
    } = &first[0][0]
    else {
        panic!("{first:?}");
    };

    // Redis loses everything.
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut b.con)
        .await
        .expect("redis");

    // What the store holds of the order (the `paid` event's data) ...
    let from_store = StoredOrder {
        user_id: order.user_id.clone(),
        quantity: order.quantity,
        status: OrderStatus::Paid,
        expires_at_ms: order.expires_at_ms,
        purchase_request_id: order.purchase_request_id.clone(),
        price: order.price,
        created_at_ms: order.created_at_ms,
        prize_id: order.prize_id.clone(),
        payment: order.payment_ref.clone().map(|p| Payment {
            paid_at_ms: *decided_at_ms,
            payment_ref: p,
        }),
    };
    // ... written back under a repair's fence; the pay's answer is not
    // part of the image (the log records purchases' decisions only).
    let mut image = CampaignImage {
        meta: meta_fields(&spec, false, false, 1),
        ..CampaignImage::default()
    };
    image.stock = StockCounters {
        total: 5,
        available: 4,
        reserved: 0,
        paid: 1,
    }
    .fields()
    .into_iter()
    .map(|(f, v)| (f.to_owned(), v))
    .collect();
    image.users.insert("alice".into(), "1".into());
    image.orders.insert(o1.clone(), from_store.encode());
    image.requests.insert("r1".into(), bought[0][0].encode());
    let k = KeyLayout::new("t").campaign("cr");
    let until = redis_ms(&mut b.con).await + 60_000;
    let _: () = redis::cmd("HSET")
        .arg(&k.meta)
        .arg(state::meta::FENCE)
        .arg("tok")
        .arg(state::meta::FENCE_UNTIL)
        .arg(until)
        .arg(state::meta::FENCE_READY)
        .arg("tok")
        .query_async(&mut b.con)
        .await
        .expect("redis");
    restore(&mut b.con, &KeyLayout::new("t"), "cr", &image, "tok")
        .await
        .expect("redis");

    // The pay redelivered (its answer was lost with Redis) and a retry
    // under another id both answer as the first pay did.
    let again = b
        .run("cr", &[pay("pay-1", "psp-7"), pay("pay-1-retry", "psp-7")])
        .await;
    assert_eq!(again, [first[0].clone(), first[0].clone()]);
    let other = b.run("cr", &[pay("pay-2", "psp-8")]).await;
    assert!(
        matches!(
            &other[0][..],
            [Outcome::CommandRefused {
                reason: RefusalReason::AlreadyPaid,
                ..
            }]
        ),
        "{other:?}"
    );
    assert_eq!(b.stock("cr").await, (5, 4, 0, 1));
}

#[tokio::test]
async fn add_stock_close_publish_and_reset() {
    let mut b = Bench::new().await;
    let mut spec = sale("c7", 1, 5, -1);
    spec.draft = true;
    b.create(spec).await;
    let out = b.run("c7", &[buy("c7", "d1", "u1", 1)]).await;
    assert!(
        matches!(&out[0][0], Outcome::Purchase { reason, .. } if *reason == Some(RefusalReason::Draft))
    );
    let out = b
        .run(
            "c7",
            &[
                admin("c7", "pub", CampaignAction::Publish),
                buy("c7", "r1", "u1", 1),
                buy("c7", "r2", "u1", 1),
                admin(
                    "c7",
                    "add",
                    CampaignAction::AddStock {
                        quantity: 2,
                        prize_id: None,
                    },
                ),
                buy("c7", "r3", "u1", 1),
                buy("c7", "r4", "u1", 1),
                buy("c7", "r5", "u1", 1),
                admin("c7", "close", CampaignAction::Close),
                buy("c7", "r6", "u2", 1),
            ],
        )
        .await;
    use DecisionStatus::*;
    assert!(matches!(
        out[0][0],
        Outcome::Campaign {
            outcome: CampaignOutcome::Applied,
            ..
        }
    ));
    assert_eq!([status(&out[1]), status(&out[2])], [Reserved, SoldOut]);
    assert_eq!(
        [status(&out[4]), status(&out[5]), status(&out[6])],
        [Reserved, Reserved, SoldOut]
    );
    assert!(
        matches!(&out[8][0], Outcome::Purchase { reason, .. } if *reason == Some(RefusalReason::Closed))
    );
    assert_eq!(b.stock("c7").await, (3, 0, 3, 0));
    let out = b
        .run("c7", &[admin("c7", "reset", CampaignAction::Reset)])
        .await;
    assert!(matches!(
        out[0][0],
        Outcome::Campaign {
            outcome: CampaignOutcome::Applied,
            ..
        }
    ));
    assert_eq!(b.stock("c7").await, (3, 3, 0, 0));
}

fn lottery(id: &str, strategy: DrawStrategy, prizes: Vec<PrizeSpec>) -> CampaignSpec {
    let mut spec = sale(id, prizes.iter().map(|p| p.stock).sum(), 1000, -1);
    spec.kind = CampaignKind::Lottery;
    spec.price = 0;
    spec.strategy = Some(strategy);
    spec.prizes = prizes;
    spec
}

fn prize(id: &str, stock: u64, probability: f64) -> PrizeSpec {
    PrizeSpec {
        id: id.into(),
        name: id.into(),
        stock,
        probability,
        award_type: Default::default(),
        price: None,
    }
}

/// After prize `a` sells out, `fixed` turns its band into losses and
/// `renormalize` hands it to `b`.
#[tokio::test]
async fn draw_strategies_after_a_prize_sells_out() {
    let mut b = Bench::new().await;
    for (id, strategy) in [
        ("fx", DrawStrategy::Fixed),
        ("rn", DrawStrategy::Renormalize),
    ] {
        b.create(lottery(
            id,
            strategy,
            vec![prize("a", 1, 0.5), prize("b", 10_000, 0.5)],
        ))
        .await;
        let draws: Vec<RequestEvent> = (0..400)
            .map(|i| buy(id, &format!("{id}-{i}"), &format!("u{i}"), 1))
            .collect();
        let out = b.run(id, &draws).await;
        let lost = out
            .iter()
            .filter(|o| status(o) == DecisionStatus::Lost)
            .count();
        let won_a = out
            .iter()
            .filter(|o| matches!(&o[0], Outcome::Purchase { prize_id: Some(p), .. } if p == "a"))
            .count();
        assert_eq!(won_a, 1, "{id}: the single unit of a is won once");
        match strategy {
            // About half the draws land on a's band; all but one of them lose.
            DrawStrategy::Fixed => assert!((150..=250).contains(&lost), "fixed lost {lost}"),
            DrawStrategy::Renormalize => {
                assert_eq!(lost, 0, "renormalize never loses while b lasts")
            }
        }
        // Free prizes are confirmed at once and counted as paid.
        let (total, available, reserved, paid) = b.stock(id).await;
        assert_eq!((reserved, paid as usize), (0, 400 - lost));
        assert_eq!(total, available + paid);
        // Redelivered draws repeat their result.
        assert_eq!(out, b.run(id, &draws).await);
    }
}

/// One call answers a request id it meets twice once, sees holdings that an
/// earlier operation of the same call changed, and after a reset in the
/// middle of the call forgets what it recorded before (answers are read
/// and written in bulk, so the script must track them itself).
#[tokio::test]
async fn one_call_tracks_its_own_answers_holdings_and_resets() {
    let mut b = Bench::new().await;
    b.create(sale("c9", 5, 1, -1)).await;
    let before = b.run("c9", &[buy("c9", "old", "u0", 1)]).await;
    assert_eq!(status(&before[0]), DecisionStatus::Reserved);

    let first_order = seckill_schemas::order_id_for("b1");
    let out = b
        .run(
            "c9",
            &[
                buy("c9", "b1", "u1", 1),
                // The same request again in the same call: same answer.
                buy("c9", "b1", "u1", 1),
                // u1 holds its limit: a second request of its is refused.
                buy("c9", "b2", "u1", 1),
                order_cmd("c9", "x1", &first_order, "u1", OrderAction::Cancel),
                // The cancel returned u1's unit: u1 may buy again.
                buy("c9", "b3", "u1", 1),
                // Recorded in an earlier call: the stored answer.
                buy("c9", "old", "u0", 1),
                admin("c9", "wipe", CampaignAction::Reset),
                // After the reset nothing is recorded or held any more.
                buy("c9", "b1", "u1", 1),
                buy("c9", "old", "u0", 1),
            ],
        )
        .await;
    use DecisionStatus::*;
    assert_eq!(out[0], out[1], "a repeated request gets the same answer");
    assert_eq!(status(&out[0]), Reserved);
    assert_eq!(status(&out[2]), Duplicate);
    assert_eq!(status(&out[4]), Reserved);
    assert_eq!(out[5], before[0], "the earlier call's answer is repeated");
    assert_eq!([status(&out[7]), status(&out[8])], [Reserved, Reserved]);
    // After the reset: two reservations of five units.
    assert_eq!(b.stock("c9").await, (5, 3, 2, 0));

    // The answers made after the reset are the recorded ones.
    let again = b
        .run("c9", &[buy("c9", "b1", "u1", 1), buy("c9", "b3", "u1", 1)])
        .await;
    assert_eq!(again[0], out[7]);
    assert_eq!(
        status(&again[1]),
        Duplicate,
        "b3 was forgotten by the reset"
    );
    assert_eq!(b.stock("c9").await, (5, 3, 2, 0));
}

// ---------------------------------------------------------------------------
// Round trip: what the script WROTE, read back with raw Redis commands and
// the Rust codecs of `seckill_schemas::state`. Each raw value must decode to
// what its operation should have produced and re-encode byte for byte, and
// the meta and stock hashes must have exactly the fields the constants name.

/// Every field of the meta hash, as `state::meta` names them.
const META_FIELDS: [&str; 13] = [
    state::meta::DEFINITION,
    state::meta::KIND,
    state::meta::PER_USER_LIMIT,
    state::meta::STARTS_AT,
    state::meta::ENDS_AT,
    state::meta::PAYMENT_TIMEOUT_SECS,
    state::meta::PRICE,
    state::meta::CLOSED,
    state::meta::DRAFT,
    state::meta::MAX_ATTEMPTS,
    state::meta::STRATEGY,
    state::meta::DRAW_TABLE,
    state::meta::CREATED_AT,
];

/// Redis server time in ms, as the script computes `now`.
async fn redis_ms(con: &mut ConnectionManager) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(con).await.expect("TIME");
    secs * 1000 + micros / 1000
}

impl Bench {
    /// Runs one call and returns its answers and the one `now` the script
    /// decided them at (checked to lie within Redis time around the call).
    async fn run_at(&mut self, cid: &str, events: &[RequestEvent]) -> (Vec<Vec<Outcome>>, i64) {
        let before = redis_ms(&mut self.con).await;
        let out = self.run(cid, events).await;
        let after = redis_ms(&mut self.con).await;
        let times: BTreeSet<i64> = out.iter().flatten().map(decided_at).collect();
        assert_eq!(times.len(), 1, "one call decides at one time: {times:?}");
        let now = *times.iter().next().expect("one time");
        assert!(
            (before..=after).contains(&now),
            "{before} <= {now} <= {after}"
        );
        (out, now)
    }

    async fn hash(&mut self, key: &str) -> HashMap<String, String> {
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.con)
            .await
            .expect("HGETALL")
    }
}

fn decided_at(a: &Outcome) -> i64 {
    match a {
        Outcome::Purchase { decided_at_ms, .. }
        | Outcome::Campaign { decided_at_ms, .. }
        | Outcome::Transition { decided_at_ms, .. }
        | Outcome::CommandRefused { decided_at_ms, .. }
        | Outcome::Held { decided_at_ms } => *decided_at_ms,
        o => panic!("no decision time in {o:?}"),
    }
}

/// Decodes one value of the `requests` hash with the codec and checks that
/// encoding it again gives the script's bytes.
fn read_answer(request_id: &str, raw: &str) -> Vec<Answer> {
    let all = Answer::decode_all(raw).unwrap_or_else(|e| panic!("request {request_id}: {e}"));
    let again: Vec<String> = all.iter().map(Answer::encode).collect();
    assert_eq!(
        again.join("\n"),
        raw,
        "request {request_id}: re-encoded differs"
    );
    if let [one] = all.as_slice() {
        assert_eq!(
            Answer::decode(raw).as_ref(),
            Ok(one),
            "request {request_id}"
        );
    }
    all
}

/// Checks the whole `requests` hash: exactly `want` (request id -> the
/// answer records), each decoded and re-encoded byte for byte, and each the
/// answer the call returned.
async fn check_requests(
    b: &mut Bench,
    cid: &str,
    want: &BTreeMap<String, Vec<Answer>>,
    returned: &BTreeMap<String, Vec<Answer>>,
) {
    let k = KeyLayout::new("t").campaign(cid);
    let raw = b.hash(&k.requests).await;
    let ids: BTreeSet<&str> = raw.keys().map(String::as_str).collect();
    let want_ids: BTreeSet<&str> = want.keys().map(String::as_str).collect();
    assert_eq!(ids, want_ids, "request ids recorded by the script");
    for (id, value) in &raw {
        let got = read_answer(id, value);
        assert_eq!(&got, &want[id], "stored answer of {id}");
        assert_eq!(
            &got, &returned[id],
            "stored answer of {id} is the one returned"
        );
    }
}

/// Checks the whole `orders` hash: exactly `want`, each record decoded and
/// re-encoded byte for byte.
async fn check_orders(b: &mut Bench, cid: &str, want: &BTreeMap<String, StoredOrder>) {
    let k = KeyLayout::new("t").campaign(cid);
    let raw = b.hash(&k.orders).await;
    let ids: BTreeSet<&str> = raw.keys().map(String::as_str).collect();
    let want_ids: BTreeSet<&str> = want.keys().map(String::as_str).collect();
    assert_eq!(ids, want_ids, "order ids stored by the script");
    for (id, value) in &raw {
        let got = StoredOrder::decode(value).unwrap_or_else(|e| panic!("order {id}: {e}"));
        assert_eq!(got.encode(), *value, "order {id}: re-encoded differs");
        assert_eq!(&got, &want[id], "order {id}");
    }
}

/// Checks the `stock` hash: the fields of `state::stock` and no others,
/// the counters `want`, each value as `StockCounters` writes it.
async fn check_stock(b: &mut Bench, cid: &str, want: StockCounters) {
    let k = KeyLayout::new("t").campaign(cid);
    let raw = b.hash(&k.stock).await;
    let names: BTreeSet<&str> = raw.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(state::stock::ALL), "stock fields");
    let got = StockCounters::from_hash(&raw).expect("stock reads");
    assert_eq!(got, want, "stock counters");
    assert!(got.conserved(), "{got:?}");
    for (name, value) in got.fields() {
        assert_eq!(raw[name], value, "stock field {name} re-encoded differs");
    }
}

/// Checks the `meta` hash: exactly the fields of `state::meta`, and exactly
/// what `meta_fields` (the repair side) writes for `spec` in this state.
/// Returns the creation time the script wrote.
async fn check_meta(b: &mut Bench, spec: &CampaignSpec, closed: bool, draft: bool) -> i64 {
    let k = KeyLayout::new("t").campaign(&spec.id);
    let raw: BTreeMap<String, String> = b.hash(&k.meta).await.into_iter().collect();
    let names: BTreeSet<&str> = raw.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(META_FIELDS),
        "meta fields written by the script"
    );
    let created_at: i64 = raw[state::meta::CREATED_AT]
        .parse()
        .expect("created_at is a number");
    let ours = seckill_processors::meta_fields(spec, closed, draft, created_at);
    let our_names: BTreeSet<&str> = ours.keys().map(String::as_str).collect();
    assert_eq!(
        our_names, names,
        "meta_fields writes the fields the script writes"
    );
    for (name, value) in &raw {
        assert_eq!(&ours[name], value, "meta field {name}");
    }
    created_at
}

fn refusal(status: DecisionStatus, reason: RefusalReason, at: i64) -> Answer {
    Answer::Purchase {
        status,
        reason: Some(reason),
        order_id: None,
        quantity: 0,
        decided_at_ms: at,
        expires_at_ms: 0,
        price: 0,
        prize_id: None,
        confirmed: false,
    }
}

fn campaign_answer(outcome: CampaignOutcome, reason: Option<RefusalReason>, at: i64) -> Answer {
    Answer::Campaign {
        outcome,
        reason,
        decided_at_ms: at,
    }
}

/// The order of `request` as a transition reports it.
fn record_of(request: &str, o: &StoredOrder) -> OrderRecord {
    OrderRecord {
        order_id: order_id_for(request),
        user_id: o.user_id.clone(),
        quantity: o.quantity,
        price: o.price,
        purchase_request_id: o.purchase_request_id.clone(),
        created_at_ms: o.created_at_ms,
        expires_at_ms: o.expires_at_ms,
        prize_id: o.prize_id.clone(),
        payment_ref: o.payment.as_ref().map(|p| p.payment_ref.clone()),
    }
}

/// Answers of one call by request id (every operation but a reset is
/// recorded; the calls checked here have none).
fn by_request(
    events: &[RequestEvent],
    out: &[Vec<Answer>],
    into: &mut BTreeMap<String, Vec<Answer>>,
) {
    for (e, a) in events.iter().zip(out) {
        let id = match e {
            RequestEvent::PurchaseRequested(p) => &p.request_id,
            RequestEvent::UpsertCampaign(u) => &u.request_id,
            RequestEvent::CampaignCommand(c) => &c.request_id,
            RequestEvent::OrderCommand(o) => &o.request_id,
            RequestEvent::ExpireDue(x) => &x.request_id,
        };
        into.insert(id.clone(), a.clone());
    }
}

/// A sale: creates (one conflicting), a refused add_stock, reservations, a
/// sell-out, a per-user limit, a pay, a cancel, a cancel by another user, an
/// expiry by the sweep and one by a late pay, a close.
#[tokio::test]
async fn sale_records_read_back_byte_for_byte() {
    let mut b = Bench::new().await;
    let mut spec = sale("rt", 5, 2, -1);
    spec.payment_timeout_secs = 1;
    let cid = "rt";
    let mut returned = BTreeMap::new();
    let mut want = BTreeMap::new();

    // Call 1: a create, a conflicting create, an add_stock of a prize a
    // sale does not have.
    let conflicting = sale("rt", 6, 2, -1);
    let events = [
        create_event(&spec),
        create_event(&conflicting),
        admin(
            cid,
            "add-gold",
            CampaignAction::AddStock {
                quantity: 1,
                prize_id: Some("gold".into()),
            },
        ),
    ];
    let (out, t1) = b.run_at(cid, &events).await;
    b.specs.insert(cid.into(), spec.clone());
    by_request(&events, &out, &mut returned);
    use CampaignOutcome::*;
    want.insert(
        "create-rt-5".into(),
        vec![campaign_answer(Created, None, t1)],
    );
    want.insert(
        "create-rt-6".into(),
        vec![campaign_answer(
            Conflict,
            Some(RefusalReason::DifferentDefinition),
            t1,
        )],
    );
    want.insert(
        "add-gold".into(),
        vec![campaign_answer(
            Refused,
            Some(RefusalReason::UnknownPrize),
            t1,
        )],
    );

    // Call 2: four reservations take the five units; a sell-out; u1 at its
    // limit of 2; u1's order is paid, u2 cancels, u1 tries to cancel u3's
    // order.
    let o = order_id_for;
    let events = [
        buy(cid, "r1", "u1", 2),
        buy(cid, "r2", "u2", 1),
        buy(cid, "r3", "u3", 1),
        buy(cid, "r6", "u6", 1),
        buy(cid, "r4", "u4", 1),
        buy(cid, "r5", "u1", 1),
        order_cmd(cid, "p1", &o("r1"), "u1", OrderAction::Pay),
        order_cmd(cid, "x2", &o("r2"), "u2", OrderAction::Cancel),
        order_cmd(cid, "x3-other", &o("r3"), "u1", OrderAction::Cancel),
    ];
    let (out, t2) = b.run_at(cid, &events).await;
    by_request(&events, &out, &mut returned);
    let deadline = t2 + 1000;
    let order = |request: &str, user: &str, quantity: u32, status: OrderStatus| StoredOrder {
        user_id: user.into(),
        quantity,
        status,
        expires_at_ms: deadline,
        purchase_request_id: request.into(),
        price: 1999,
        created_at_ms: t2,
        prize_id: None,
        payment: None,
    };
    // r1's order, paid by p1.
    let paid_r1 = StoredOrder {
        payment: Some(Payment {
            paid_at_ms: t2,
            payment_ref: "ref-p1".into(),
        }),
        ..order("r1", "u1", 2, OrderStatus::Paid)
    };
    for (request, quantity) in [("r1", 2), ("r2", 1), ("r3", 1), ("r6", 1)] {
        want.insert(
            request.into(),
            vec![Answer::Purchase {
                status: DecisionStatus::Reserved,
                reason: None,
                order_id: Some(o(request)),
                quantity,
                decided_at_ms: t2,
                expires_at_ms: deadline,
                price: 1999,
                prize_id: None,
                confirmed: false,
            }],
        );
    }
    want.insert(
        "r4".into(),
        vec![refusal(DecisionStatus::SoldOut, RefusalReason::SoldOut, t2)],
    );
    want.insert(
        "r5".into(),
        vec![refusal(
            DecisionStatus::LimitExceeded,
            RefusalReason::PerUserLimit,
            t2,
        )],
    );
    want.insert(
        "p1".into(),
        vec![Answer::Transition {
            to: OrderStatus::Paid,
            order: record_of("r1", &paid_r1),
            decided_at_ms: t2,
        }],
    );
    want.insert(
        "x2".into(),
        vec![Answer::Transition {
            to: OrderStatus::Cancelled,
            order: record_of("r2", &order("r2", "u2", 1, OrderStatus::Cancelled)),
            decided_at_ms: t2,
        }],
    );
    want.insert(
        "x3-other".into(),
        vec![Answer::CommandRefused {
            reason: RefusalReason::NotOwner,
            decided_at_ms: t2,
        }],
    );
    check_requests(&mut b, cid, &want, &returned).await;
    check_stock(
        &mut b,
        cid,
        StockCounters {
            total: 5,
            available: 1,
            reserved: 2,
            paid: 2,
        },
    )
    .await;

    // Call 3, past the deadline: a late pay expires its order, the sweep
    // expires the other one; then a close.
    while redis_ms(&mut b.con).await <= deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = [
        order_cmd(cid, "p6-late", &o("r6"), "u6", OrderAction::Pay),
        RequestEvent::ExpireDue(ExpireDue {
            schema_version: 1,
            request_id: "sweep".into(),
            campaign_id: cid.into(),
        }),
        admin(cid, "close", CampaignAction::Close),
    ];
    let (out, t3) = b.run_at(cid, &events).await;
    by_request(&events, &out, &mut returned);
    assert_eq!(
        out[1],
        vec![Answer::Transition {
            to: OrderStatus::Expired,
            order: record_of("r3", &order("r3", "u3", 1, OrderStatus::Expired)),
            decided_at_ms: t3,
        }],
        "the sweep expires r3's order"
    );
    want.insert(
        "p6-late".into(),
        vec![
            Answer::Transition {
                to: OrderStatus::Expired,
                order: record_of("r6", &order("r6", "u6", 1, OrderStatus::Expired)),
                decided_at_ms: t3,
            },
            Answer::CommandRefused {
                reason: RefusalReason::Expired,
                decided_at_ms: t3,
            },
        ],
    );
    want.insert("sweep".into(), out[1].clone());
    want.insert("close".into(), vec![campaign_answer(Applied, None, t3)]);

    check_requests(&mut b, cid, &want, &returned).await;
    let orders = BTreeMap::from([
        (o("r1"), paid_r1.clone()),
        (o("r2"), order("r2", "u2", 1, OrderStatus::Cancelled)),
        (o("r3"), order("r3", "u3", 1, OrderStatus::Expired)),
        (o("r6"), order("r6", "u6", 1, OrderStatus::Expired)),
    ]);
    check_orders(&mut b, cid, &orders).await;
    check_stock(
        &mut b,
        cid,
        StockCounters {
            total: 5,
            available: 3,
            reserved: 0,
            paid: 2,
        },
    )
    .await;
    let created_at = check_meta(&mut b, &spec, true, false).await;
    assert_eq!(created_at, t1, "created when the create was decided");
}

/// A lottery created as a draft: a publish, a won free prize (born paid), a
/// lost draw, stock added to the prize.
#[tokio::test]
async fn lottery_records_read_back_byte_for_byte() {
    let mut b = Bench::new().await;
    let cid = "lt";
    let mut spec = lottery(cid, DrawStrategy::Fixed, vec![prize("gold", 3, 0.5)]);
    spec.draft = true;
    // Draw points are a function of the campaign's draw secret (derived
    // from the draw key) and the request id: pick one request that lands in
    // gold's band and one that does not.
    let secret = DrawSecret::derive(DRAW_KEY, cid);
    let pick = |win: bool| {
        (0..)
            .map(|i| format!("draw-{i}"))
            .find(|r| (secret.point(r) < 0.5) == win)
            .expect("some request id")
    };
    let (win, lose) = (pick(true), pick(false));
    let events = [
        create_event(&spec),
        admin(cid, "publish", CampaignAction::Publish),
        buy(cid, &win, "winner", 1),
        buy(cid, &lose, "loser", 1),
        admin(
            cid,
            "add-gold",
            CampaignAction::AddStock {
                quantity: 2,
                prize_id: Some("gold".into()),
            },
        ),
    ];
    let (out, t) = b.run_at(cid, &events).await;
    b.specs.insert(cid.into(), spec.clone());
    let mut returned = BTreeMap::new();
    by_request(&events, &out, &mut returned);

    use CampaignOutcome::*;
    let want = BTreeMap::from([
        (
            "create-lt-3".to_owned(),
            vec![campaign_answer(Created, None, t)],
        ),
        (
            "publish".to_owned(),
            vec![campaign_answer(Applied, None, t)],
        ),
        (
            win.clone(),
            vec![Answer::Purchase {
                status: DecisionStatus::Won,
                reason: None,
                order_id: Some(order_id_for(&win)),
                quantity: 1,
                decided_at_ms: t,
                // Born paid: no payment deadline ahead.
                expires_at_ms: t,
                price: 0,
                prize_id: Some("gold".into()),
                confirmed: true,
            }],
        ),
        (
            lose.clone(),
            vec![refusal(DecisionStatus::Lost, RefusalReason::Lost, t)],
        ),
        (
            "add-gold".to_owned(),
            vec![campaign_answer(Applied, None, t)],
        ),
    ]);
    check_requests(&mut b, cid, &want, &returned).await;
    let orders = BTreeMap::from([(
        order_id_for(&win),
        StoredOrder {
            user_id: "winner".into(),
            quantity: 1,
            status: OrderStatus::Paid,
            expires_at_ms: t,
            purchase_request_id: win.clone(),
            price: 0,
            created_at_ms: t,
            prize_id: Some("gold".into()),
            payment: None,
        },
    )]);
    check_orders(&mut b, cid, &orders).await;
    check_stock(
        &mut b,
        cid,
        StockCounters {
            total: 5,
            available: 4,
            reserved: 0,
            paid: 1,
        },
    )
    .await;
    // The prize's units left and ever added.
    let k = KeyLayout::new("t").campaign(cid);
    let prizes = b.hash(&k.prizes).await;
    assert_eq!(
        prizes,
        HashMap::from([
            ("gold".to_owned(), "4".to_owned()),
            (state::prizes::total("gold"), "5".to_owned()),
        ])
    );
    // Published: no longer a draft, though the definition says it was
    // created as one.
    let created_at = check_meta(&mut b, &spec, false, false).await;
    assert_eq!(created_at, t);
}

// ---------------------------------------------------------------------------
// Expiry recorded once, and retired campaigns' records bounded.

fn expire(cid: &str, request: &str) -> RequestEvent {
    RequestEvent::ExpireDue(ExpireDue {
        schema_version: 1,
        request_id: request.into(),
        campaign_id: cid.into(),
    })
}

/// The expired transitions of one answer: (order id, decided_at).
fn expired(out: &[Outcome]) -> Vec<(String, i64)> {
    out.iter()
        .map(|a| match a {
            Outcome::Transition {
                to: OrderStatus::Expired,
                order,
                decided_at_ms,
            } => (order.order_id.clone(), *decided_at_ms),
            a => panic!("expected an expired transition, got {a:?}"),
        })
        .collect()
}

impl Bench {
    /// Waits until Redis time is past `deadline_ms`.
    async fn wait_past(&mut self, deadline_ms: i64) {
        while redis_ms(&mut self.con).await <= deadline_ms {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut self.con)
            .await
            .expect("PTTL")
    }

    async fn exists(&mut self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut self.con)
            .await
            .expect("EXISTS")
            == 1
    }

    async fn used_memory(&mut self) -> i64 {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.con)
            .await
            .expect("INFO memory");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory in INFO memory")
    }
}

fn deadline_of(o: &[Outcome]) -> i64 {
    match &o[0] {
        Outcome::Purchase { expires_at_ms, .. } => *expires_at_ms,
        o => panic!("expected a purchase, got {o:?}"),
    }
}

/// A lost reply (batch error, response timeout, crash before the events
/// are produced) makes the processor decide the same `expire_due` message
/// again: it must get the orders the first call expired, which are no
/// longer due, and change nothing.
#[tokio::test]
async fn a_repeated_expiry_repeats_its_transitions_and_moves_stock_once() {
    let mut b = Bench::new().await;
    let cid = "ex1";
    let mut spec = sale(cid, 5, 1, -1);
    spec.payment_timeout_secs = 1;
    b.create(spec).await;
    let out = b
        .run(cid, &[buy(cid, "r1", "u1", 1), buy(cid, "r2", "u2", 1)])
        .await;
    let orders = [order_of(&out[0]), order_of(&out[1])];
    assert_eq!(b.stock(cid).await, (5, 3, 2, 0));
    b.wait_past(deadline_of(&out[0]).max(deadline_of(&out[1])))
        .await;

    let sweep = expire(cid, "expire-ex1-1");
    let first = b.run(cid, std::slice::from_ref(&sweep)).await;
    let got = expired(&first[0]);
    let ids: BTreeSet<&str> = got.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(ids, orders.iter().map(String::as_str).collect());
    assert_eq!(b.stock(cid).await, (5, 5, 0, 0));

    // The same message again, as after a lost reply.
    let again = b.run(cid, std::slice::from_ref(&sweep)).await;
    assert_eq!(
        expired(&again[0]),
        got,
        "the retry carries the same expired orders, decided at the same time"
    );
    assert_eq!(again, first, "the retry gets the recorded answer");
    assert_eq!(
        b.stock(cid).await,
        (5, 5, 0, 0),
        "units came back once (available +2 once, reserved -2 once)"
    );
    // The users' holdings were returned once too: both may buy again.
    let out = b
        .run(cid, &[buy(cid, "r3", "u1", 1), buy(cid, "r4", "u2", 1)])
        .await;
    assert_eq!(
        [status(&out[0]), status(&out[1])],
        [DecisionStatus::Reserved, DecisionStatus::Reserved]
    );
    // A new sweep finds nothing due.
    let out = b.run(cid, &[expire(cid, "expire-ex1-2")]).await;
    assert!(out[0].is_empty(), "{:?}", out[0]);
}

/// Several expiry messages of one campaign in one batch, more orders due
/// than one expiry takes (1000), and the whole batch decided again: each
/// message repeats its own share, and each order is expired by one only.
#[tokio::test]
async fn expiries_of_one_batch_repeat_as_a_whole_beyond_the_per_call_limit() {
    let mut b = Bench::new().await;
    let cid = "ex2";
    let mut spec = sale(cid, 1500, 1, -1);
    spec.payment_timeout_secs = 1;
    b.create(spec).await;
    let buys: Vec<RequestEvent> = (0..1001)
        .map(|i| buy(cid, &format!("r{i}"), &format!("u{i}"), 1))
        .collect();
    let out = b.run(cid, &buys).await;
    let last = out.iter().map(|o| deadline_of(o)).max().unwrap();
    assert_eq!(b.stock(cid).await, (1500, 499, 1001, 0));
    b.wait_past(last).await;

    let batch = [
        expire(cid, "expire-ex2-1"),
        expire(cid, "expire-ex2-2"),
        // A duplicate of the first message (a producer retry).
        expire(cid, "expire-ex2-1"),
    ];
    let first = b.run(cid, &batch).await;
    assert_eq!(first[0].len(), 1000, "one expiry takes at most 1000");
    assert_eq!(first[1].len(), 1, "the second takes what the first left");
    assert_eq!(first[2], first[0], "a duplicate repeats the first");
    let all: BTreeSet<String> = first[..2]
        .iter()
        .flat_map(|o| expired(o))
        .map(|(o, _)| o)
        .collect();
    assert_eq!(all.len(), 1001, "every order expired once");
    assert_eq!(b.stock(cid).await, (1500, 1500, 0, 0));

    let again = b.run(cid, &batch).await;
    assert_eq!(again, first, "the redelivered batch repeats every answer");
    assert_eq!(b.stock(cid).await, (1500, 1500, 0, 0));
}

/// The keys retirement drops, by name.
fn record_keys(k: &state::CampaignKeys) -> [(&'static str, String); 6] {
    [
        ("users", k.users.clone()),
        ("requests", k.requests.clone()),
        ("orders", k.orders.clone()),
        ("deadlines", k.deadlines.clone()),
        ("attempts", k.attempts.clone()),
        ("stats", k.stats.clone()),
    ]
}

/// With a retention of 2 s: a closed campaign's per-request records are
/// gone 3 s after its close (after its last pending deadline, when later),
/// an ended one's likewise once a call (the sweeper's expiry) saw it ended,
/// while their meta, stock and prizes stay; a live campaign's records carry
/// no TTL at all; and a late request to a retired campaign gets its record
/// a TTL again.
#[tokio::test]
async fn retired_campaigns_drop_their_records_and_live_ones_keep_them() {
    let mut b = Bench::new().await;
    b.decider = Decider::with_retention("t", 2, DRAW_KEY.to_vec());
    let layout = KeyLayout::new("t");

    // Three lotteries (so every record key exists, attempts included),
    // each with a pay, a sold-out draw, a win left reserved.
    let priced = |id: &str| {
        let mut s = lottery(id, DrawStrategy::Renormalize, vec![prize("gold", 2, 1.0)]);
        s.prizes[0].price = Some(100);
        s.payment_timeout_secs = 1;
        s
    };
    let closed = priced("ret-closed");
    let live = priced("ret-live");
    let mut ended = priced("ret-ended");
    ended.ends_at = Utc::now() + ChronoDuration::milliseconds(2000);
    let mut pending = BTreeMap::new();
    for spec in [&closed, &live, &ended] {
        let cid = spec.id.clone();
        b.create(spec.clone()).await;
        let out = b
            .run(
                &cid,
                &[
                    buy(&cid, "r1", "u1", 1),
                    buy(&cid, "r2", "u2", 1),
                    buy(&cid, "r3", "u3", 1),
                    order_cmd(&cid, "p1", &order_id_for("r1"), "u1", OrderAction::Pay),
                ],
            )
            .await;
        assert_eq!(status(&out[2]), DecisionStatus::SoldOut, "{cid}");
        assert!(
            matches!(
                &out[3][0],
                Outcome::Transition {
                    to: OrderStatus::Paid,
                    ..
                }
            ),
            "{cid}: {:?}",
            out[3]
        );
        pending.insert(cid, deadline_of(&out[1]));
        let k = layout.campaign(&spec.id);
        for (name, key) in record_keys(&k) {
            assert!(b.exists(&key).await, "{}: {name} written", spec.id);
            assert_eq!(
                b.pttl(&key).await,
                -1,
                "{}: live {name} has no TTL",
                spec.id
            );
        }
    }

    // The close: every record gets a TTL of 2 s after the pending
    // reservation's deadline (about 1 s ahead), not before.
    let cid = closed.id.as_str();
    let closed_at = redis_ms(&mut b.con).await;
    b.run(cid, &[admin(cid, "close", CampaignAction::Close)])
        .await;
    let k = layout.campaign(cid);
    for (name, key) in record_keys(&k) {
        let ttl = b.pttl(&key).await;
        // At most 2 s after the deadline, counted from before the close
        // (a slow machine may close after the deadline: then from the close).
        let until = pending[cid] + 2000 - closed_at;
        assert!(
            ttl > 0 && ttl <= until.max(2000) && ttl >= until - 500,
            "closed {name}: PTTL {ttl}, want about {until}"
        );
    }

    // Past the deadlines and the end of `ended`'s window: the sweeper's
    // expiry (a call like any other) expires what is due and retires the
    // ended campaign.
    let last = *pending.values().max().unwrap();
    b.wait_past(last.max(ended.ends_at.timestamp_millis()))
        .await;
    for spec in [&closed, &ended, &live] {
        let out = b.run(&spec.id, &[expire(&spec.id, "sweep-1")]).await;
        assert_eq!(expired(&out[0]).len(), 1, "{}", spec.id);
    }
    let swept_at = redis_ms(&mut b.con).await;
    b.wait_past(swept_at + 3000).await;

    for spec in [&closed, &ended] {
        let k = layout.campaign(&spec.id);
        for (name, key) in record_keys(&k) {
            assert!(!b.exists(&key).await, "{}: {name} dropped", spec.id);
        }
        assert!(b.exists(&k.meta).await, "{}: meta kept", spec.id);
        assert!(b.exists(&k.prizes).await, "{}: prizes kept", spec.id);
        assert_eq!(
            b.stock(&spec.id).await,
            (2, 1, 0, 1),
            "{}: stock kept",
            spec.id
        );
    }
    let k = layout.campaign(&live.id);
    for (name, key) in record_keys(&k) {
        if name == "deadlines" {
            // Emptied by the expiry: Redis drops an empty sorted set.
            continue;
        }
        assert!(b.exists(&key).await, "live {name} kept");
        assert_eq!(b.pttl(&key).await, -1, "live {name} has no TTL");
    }

    // A late redelivery to the closed campaign: decided again (closed),
    // and the record it creates expires by itself too.
    let out = b.run(cid, &[buy(cid, "r1", "u1", 1)]).await;
    assert!(
        matches!(&out[0][0], Outcome::Purchase { reason, .. } if *reason == Some(RefusalReason::Closed)),
        "{out:?}"
    );
    let k = layout.campaign(cid);
    for key in [&k.requests, &k.stats] {
        let ttl = b.pttl(key).await;
        assert!((1..=2000).contains(&ttl), "{key}: PTTL {ttl}");
    }
}

/// Answers for a campaign that does not exist (yet) expire after one
/// retention; once the campaign is created they no longer do.
#[tokio::test]
async fn unknown_campaign_answers_expire_until_it_is_created() {
    let mut b = Bench::new().await;
    b.decider = Decider::with_retention("t", 60, DRAW_KEY.to_vec());
    let k = KeyLayout::new("t").campaign("later");
    b.run("later", &[buy("later", "early", "u1", 1)]).await;
    let ttl = b.pttl(&k.requests).await;
    assert!((59_000..=60_000).contains(&ttl), "PTTL {ttl}");
    b.create(sale("later", 3, 1, -1)).await;
    for (name, key) in record_keys(&k) {
        assert!(b.pttl(&key).await < 0, "{name} keeps no TTL once created");
    }
}

/// Redis bytes per decided request: N reservations through the script
/// (each leaving a request record, an order, a deadline, a holding), and
/// then with the two lookups the processor writes per reservation
/// (the result JSON and the order's campaign, as fields of the lookup
/// hashes, as `index_pipeline` does).
#[tokio::test]
async fn redis_bytes_per_decided_request() {
    const N: usize = 20_000;
    let mut b = Bench::new().await;
    let cid = "mem";
    b.create(sale(cid, N as u64, 1, -1)).await;
    let before = b.used_memory().await;
    let mut decided = Vec::with_capacity(N);
    for chunk in 0..N / 1000 {
        let events: Vec<RequestEvent> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| {
                buy(
                    cid,
                    &format!("req-{i:08}-{:016x}", i * 7919),
                    &format!("user-{i:08}"),
                    1,
                )
            })
            .collect();
        let out = b.run(cid, &events).await;
        decided.extend(events.into_iter().zip(out));
    }
    let script = b.used_memory().await - before;
    assert_eq!(b.stock(cid).await, (N as i64, 0, N as i64, 0));
    let layout = KeyLayout::new("t");
    for chunk in decided.chunks(1000) {
        let mut pipe = redis::pipe();
        for (e, out) in chunk {
            let RequestEvent::PurchaseRequested(p) = e else {
                unreachable!()
            };
            let Outcome::Purchase {
                status,
                order_id,
                quantity,
                expires_at_ms,
                ..
            } = &out[0]
            else {
                unreachable!()
            };
            let decision = seckill_schemas::Decision {
                request_id: p.request_id.clone(),
                campaign_id: cid.into(),
                user_id: p.user_id.clone(),
                status: *status,
                reason: None,
                order_id: order_id.clone(),
                quantity: Some(*quantity),
                expires_at_ms: Some(*expires_at_ms),
                prize_id: None,
                prize_name: None,
            };
            let json = serde_json::to_string(&decision).unwrap();
            let order_id = order_id.as_deref().unwrap();
            pipe.hset(
                layout.lookup(LookupKind::Result, &p.request_id, 1),
                &p.request_id,
                json,
            )
            .ignore();
            pipe.hset(
                layout.lookup(LookupKind::OrderCampaign, order_id, 1),
                order_id,
                cid,
            )
            .ignore();
        }
        let _: () = pipe.query_async(&mut b.con).await.unwrap();
    }
    let total = b.used_memory().await - before;
    let per_script = script as f64 / N as f64;
    let per_total = total as f64 / N as f64;
    println!(
        "redis bytes per decided request (N = {N} reservations): {per_script:.0} in the \
         campaign's keys (script), {per_total:.0} with the decision/order lookups"
    );
    // Generous bounds (about 2x the 607 and 1170 bytes measured): a regression guard,
    // not a benchmark.
    assert!(per_script > 0.0 && per_script < 1200.0, "{per_script}");
    assert!(per_total < 2400.0, "{per_total}");
}

fn fence(id: &str, request: &str, token: &str, until_ms: i64) -> RequestEvent {
    admin(
        id,
        request,
        CampaignAction::Fence {
            token: token.into(),
            until_ms,
        },
    )
}

#[tokio::test]
async fn a_fence_holds_later_requests_until_the_repair_lifts_it() {
    use seckill_processors::{meta_fields, restore, CampaignImage};
    let mut b = Bench::new().await;
    let spec = sale("cf", 5, 1, -1);
    b.create(spec.clone()).await;
    let k = KeyLayout::new("t").campaign("cf");
    b.run("cf", &[buy("cf", "r1", "u1", 1)]).await;
    let r1: String = redis::cmd("HGET")
        .arg(&k.requests)
        .arg("r1")
        .query_async(&mut b.con)
        .await
        .unwrap();
    let until = redis_ms(&mut b.con).await + 60_000;
    let batch = [
        buy("cf", "r2", "u2", 1),
        fence("cf", "fence-1", "tok1", until),
        buy("cf", "r3", "u3", 1),
    ];
    let refs: Vec<&RequestEvent> = batch.iter().collect();
    let held = b.decider.decide(&mut b.con, "cf", Some(&spec), &refs).await;
    assert!(
        matches!(&held, Err(seckill_processors::DecideError::Fenced { token }) if token == "tok1"),
        "{held:?}"
    );
    // What came before the fence was decided; what came after was not.
    assert_eq!(b.stock("cf").await, (5, 3, 2, 0));
    let later = [buy("cf", "r4", "u4", 1)];
    let refs4: Vec<&RequestEvent> = later.iter().collect();
    assert!(b
        .decider
        .decide(&mut b.con, "cf", Some(&spec), &refs4)
        .await
        .is_err());
    assert_eq!(b.stock("cf").await, (5, 3, 2, 0));

    // The image of a repair that knows only r1 (r2's decision never left
    // the processor): refused until the processor has reached the fence,
    // and refused under another token.
    let mut image = CampaignImage {
        meta: meta_fields(&spec, false, false, 1),
        ..CampaignImage::default()
    };
    image.stock = [
        ("total", "5"),
        ("available", "4"),
        ("reserved", "1"),
        ("paid", "0"),
    ]
    .into_iter()
    .map(|(f, v)| (f.to_owned(), v.to_owned()))
    .collect();
    image.users.insert("u1".into(), "1".into());
    image.requests.insert("r1".into(), r1);
    image
        .requests
        .insert("fence-1".into(), "c|applied||1".into());
    let keys = KeyLayout::new("t");
    let not_ready = restore(&mut b.con, &keys, "cf", &image, "tok1").await;
    assert!(not_ready.is_err(), "restored before the fence was reached");
    let _: () = redis::cmd("HSET")
        .arg(&k.meta)
        .arg(state::meta::FENCE_READY)
        .arg("tok1")
        .query_async(&mut b.con)
        .await
        .unwrap();
    let wrong = restore(&mut b.con, &keys, "cf", &image, "tok2").await;
    assert!(wrong.is_err(), "restored under another fence's token");
    assert_eq!(b.stock("cf").await, (5, 3, 2, 0), "a refused restore wrote");
    restore(&mut b.con, &keys, "cf", &image, "tok1")
        .await
        .unwrap();

    // The fence is lifted: the held batch is decided again as a whole, the
    // fence repeating its recorded answer instead of fencing again.
    let out = b.run("cf", &batch).await;
    assert_eq!(status(&out[0]), DecisionStatus::Reserved);
    assert!(matches!(
        out[1][0],
        Outcome::Campaign {
            outcome: CampaignOutcome::Applied,
            ..
        }
    ));
    assert_eq!(status(&out[2]), DecisionStatus::Reserved);
    let out = b.run("cf", &later).await;
    assert_eq!(status(&out[0]), DecisionStatus::Reserved);
    assert_eq!(b.stock("cf").await, (5, 1, 4, 0));
}

#[tokio::test]
async fn a_fence_past_its_time_stops_holding() {
    let mut b = Bench::new().await;
    let spec = sale("cg", 5, 1, -1);
    b.create(spec.clone()).await;
    let until = redis_ms(&mut b.con).await + 300;
    let batch = [
        fence("cg", "fence-g", "tokg", until),
        buy("cg", "g1", "u1", 1),
    ];
    let refs: Vec<&RequestEvent> = batch.iter().collect();
    assert!(b
        .decider
        .decide(&mut b.con, "cg", Some(&spec), &refs)
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let out = b.run("cg", &batch).await;
    assert_eq!(status(&out[1]), DecisionStatus::Reserved);
    let k = KeyLayout::new("t").campaign("cg");
    let left: Option<String> = redis::cmd("HGET")
        .arg(&k.meta)
        .arg(state::meta::FENCE)
        .query_async(&mut b.con)
        .await
        .unwrap();
    assert_eq!(left, None, "an expired fence stays in meta");
}
