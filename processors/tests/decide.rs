//! The decision script against a real redis-server that this test starts:
//! every operation, and the invariants the script promises.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use redis::aio::ConnectionManager;
use seckill_processors::Decider;
use seckill_schemas::state::Answer as Outcome;
use seckill_schemas::RefusalReason;
use seckill_schemas::{
    CampaignAction, CampaignCommand, CampaignKind, CampaignOutcome, CampaignSpec, DecisionStatus,
    DrawStrategy, ExpireDue, KeyLayout, OrderAction, OrderCommand, OrderStatus, PrizeSpec,
    PurchaseRequested, RequestEvent, UpsertCampaign,
};

struct Redis {
    child: Child,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_redis() -> Redis {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/install-deps installs it)");
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Redis { child, url };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not start on {port}");
}

/// A real Redis plus the decider, and the campaign specs it has created.
struct Bench {
    _redis: Redis,
    con: ConnectionManager,
    decider: Decider,
    specs: std::collections::HashMap<String, CampaignSpec>,
}

impl Bench {
    async fn new() -> Self {
        let redis = start_redis().await;
        let con = seckill_processors::connect_redis(&redis.url).await.unwrap();
        Self {
            _redis: redis,
            con,
            decider: Decider::new("t"),
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

fn order_cmd(
    id: &str,
    request: &str,
    order: &str,
    user: &str,
    action: OrderAction,
) -> RequestEvent {
    RequestEvent::OrderCommand(OrderCommand {
        schema_version: 1,
        request_id: request.into(),
        campaign_id: id.into(),
        order_id: order.into(),
        user_id: user.into(),
        action,
        requested_at_ms: None,
    })
}

fn admin(id: &str, request: &str, action: CampaignAction) -> RequestEvent {
    RequestEvent::CampaignCommand(CampaignCommand {
        schema_version: 1,
        request_id: request.into(),
        campaign_id: id.into(),
        action,
        requested_at_ms: None,
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
                order_cmd("c6", "p3-wrong-user", &o3, "u1", OrderAction::Pay),
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
    assert!(matches!(&out[2][0], Outcome::CommandRefused { reason, .. } if *reason == RefusalReason::NotOwner));
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
    assert!(matches!(&out[0][1], Outcome::CommandRefused { reason, .. } if *reason == RefusalReason::Expired));
    assert!(out[1].is_empty(), "nothing left to expire: {:?}", out[1]);
    assert!(matches!(&out[2][0], Outcome::CommandRefused { reason, .. } if *reason == RefusalReason::Expired));
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
    assert!(matches!(&out[1][0], Outcome::CommandRefused { reason, .. } if *reason == RefusalReason::Cancelled));
    assert_eq!(b.stock("c6").await, (4, 3, 0, 1));

    // The cancelled user may buy again; a sweep expires only what is due.
    let out = b.run("c6", &[buy("c6", "r4", "u2", 1), sweep]).await;
    assert_eq!(status(&out[0]), DecisionStatus::Reserved);
    assert!(out[1].is_empty());
}

#[tokio::test]
async fn add_stock_close_publish_and_reset() {
    let mut b = Bench::new().await;
    let mut spec = sale("c7", 1, 5, -1);
    spec.draft = true;
    b.create(spec).await;
    let out = b.run("c7", &[buy("c7", "d1", "u1", 1)]).await;
    assert!(matches!(&out[0][0], Outcome::Purchase { reason, .. } if *reason == Some(RefusalReason::Draft)));
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
    assert!(matches!(&out[8][0], Outcome::Purchase { reason, .. } if *reason == Some(RefusalReason::Closed)));
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
