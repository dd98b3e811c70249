//! `seckill verify-draws <campaign>`: checks every draw of a closed lottery
//! against its revealed draw secret.
//!
//! While a lottery is open nobody outside ingest and the processors knows
//! its draw secret; the campaign view shows only its commitment
//! (hex SHA-256 of the secret). Once the campaign is closed or its window
//! has ended the view reveals the secret too. This command
//!
//! 1. reads the campaign view from ingest (`--api`) and refuses while the
//!    secret is not revealed; checks the revealed secret against the
//!    commitment (the view's, or `--commitment` as noted before the draws);
//! 2. reads the orders topic from its start to its end and replays the
//!    campaign's draws (decisions `won` and `lost`) in decision order, as
//!    decide.lua does: each draw point is `draw_point(secret, request_id)`,
//!    and the prize table runs down (and up, with stock added to a prize
//!    and prizes returned by cancelled or expired orders) as the log says;
//! 3. checks that every lottery order in the store (`--store`) is a
//!    verified winning draw of the same user and prize, and that every
//!    winning draw has its order.
//!
//! It prints a summary and every mismatch, and fails on any mismatch.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::message::Message;
use serde_json::json;

use seckill_schemas::{
    order_id_for, CampaignKind, CampaignOutcome, CampaignSpec, CampaignView, DecisionStatus,
    DrawSecret, DrawStrategy, OrderEvent, PrizeSpec,
};

use crate::args::{KafkaArgs, StoreArgs};
use seckill_cli::topic::read_range;

#[derive(Debug, Args)]
pub(crate) struct VerifyDrawsCmd {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// Base URL of ingest: the campaign view (`GET /v1/campaigns/{id}`)
    /// gives the definition, the commitment and the revealed secret.
    #[arg(long, env = "SECKILL_API_URL", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Bearer token sent with the request for the view, if ingest needs one.
    #[arg(long, env = "SECKILL_API_TOKEN")]
    api_token: Option<String>,
    /// The draw commitment as published before the draws (e.g. noted when
    /// the campaign was created); default: the one the view shows.
    #[arg(long)]
    commitment: Option<String>,
    /// The lottery to check.
    campaign: String,
}

/// What the replay found for one draw.
#[derive(Debug, Clone)]
struct Draw {
    request_id: String,
    user_id: String,
    /// The prize the log says it won (`None`: lost).
    recorded: Option<String>,
    /// Whether the secret gives the same result.
    verified: bool,
}

/// The prize table as the processors draw from it, with each prize's
/// units left.
#[derive(Debug, Clone)]
struct Table {
    prizes: Vec<PrizeSpec>,
    strategy: DrawStrategy,
    /// Units left, by position in `prizes`.
    left: Vec<i64>,
    /// Units ever added (the prize's total), by position.
    total: Vec<i64>,
}

impl Table {
    fn new(spec: &CampaignSpec) -> Self {
        let prizes = spec.draw_table();
        let total: Vec<i64> = prizes.iter().map(|p| p.stock as i64).collect();
        Self {
            strategy: spec.strategy.unwrap_or_default(),
            left: total.clone(),
            total,
            prizes,
        }
    }

    fn index(&self, prize_id: &str) -> Option<usize> {
        self.prizes.iter().position(|p| p.id == prize_id)
    }

    /// The prize a draw at `u` wins (its position), or `None` (lost), by
    /// the rules of decide.lua `draw`, in the same floating-point steps.
    fn draw(&self, u: f64) -> Option<usize> {
        match self.strategy {
            DrawStrategy::Fixed => {
                let mut cum = 0.0;
                for (i, p) in self.prizes.iter().enumerate() {
                    cum += p.probability;
                    if u < cum {
                        return (self.left[i] > 0).then_some(i);
                    }
                }
                None
            }
            DrawStrategy::Renormalize => {
                let mut all = 0.0;
                let mut left = 0.0;
                for (i, p) in self.prizes.iter().enumerate() {
                    all += p.probability;
                    if self.left[i] > 0 {
                        left += p.probability;
                    }
                }
                if left <= 0.0 {
                    return None;
                }
                let mut cum = 0.0;
                for (i, p) in self.prizes.iter().enumerate() {
                    if self.left[i] > 0 {
                        cum += p.probability * all / left;
                        if u < cum {
                            return Some(i);
                        }
                    }
                }
                None
            }
        }
    }

    /// An applied reset: every prize back to its total.
    fn reset(&mut self) {
        self.left.clone_from(&self.total);
    }
}

/// Replays one campaign's order events, in decision order.
struct Replay {
    secret: DrawSecret,
    table: Table,
    /// Draws by request id (the first decision of each request).
    draws: HashMap<String, Draw>,
    /// Request ids in decision order.
    order: Vec<String>,
    /// Orders whose units came back (cancelled or expired), counted once.
    released: HashSet<String>,
    mismatches: Vec<String>,
    /// The definition the log's create carries, if it is in the log.
    logged_spec: Option<CampaignSpec>,
}

impl Replay {
    fn new(spec: &CampaignSpec, secret: DrawSecret) -> Self {
        Self {
            secret,
            table: Table::new(spec),
            draws: HashMap::new(),
            order: Vec::new(),
            released: HashSet::new(),
            mismatches: Vec::new(),
            logged_spec: None,
        }
    }

    fn name(&self, prize: Option<usize>) -> String {
        prize.map_or_else(
            || "a loss".to_owned(),
            |i| format!("prize {:?}", self.table.prizes[i].id),
        )
    }

    fn fold(&mut self, offset: (i32, i64), event: &OrderEvent) {
        match event {
            OrderEvent::CampaignApplied(a) => {
                let applied = matches!(
                    a.outcome,
                    CampaignOutcome::Created | CampaignOutcome::Applied
                );
                match (a.action.as_str(), applied) {
                    ("create", true) => self.logged_spec = a.campaign.clone(),
                    ("add_stock", true) => {
                        let q = a.quantity.unwrap_or(0) as i64;
                        let prize = match &a.prize_id {
                            Some(p) => self.table.index(p),
                            None if self.table.prizes.len() == 1 => Some(0),
                            None => None,
                        };
                        match prize {
                            Some(i) => {
                                self.table.left[i] += q;
                                self.table.total[i] += q;
                            }
                            None => self.mismatches.push(format!(
                                "offset {}/{}: stock added to prize {:?}, which the campaign \
                                 does not have",
                                offset.0, offset.1, a.prize_id
                            )),
                        }
                    }
                    ("reset", true) => {
                        self.table.reset();
                        self.draws.clear();
                        self.order.clear();
                        self.released.clear();
                    }
                    _ => {}
                }
            }
            OrderEvent::Reserved(e) | OrderEvent::Confirmed(e) => {
                let Some(prize) = &e.prize_id else {
                    self.mismatches.push(format!(
                        "offset {}/{}: request {} reserved an order without a prize in a lottery",
                        offset.0, offset.1, e.request_id
                    ));
                    return;
                };
                self.draw(offset, &e.request_id, &e.user_id, Some(prize));
            }
            OrderEvent::Rejected(e) if e.status == DecisionStatus::Lost => {
                self.draw(offset, &e.request_id, &e.user_id, None);
            }
            OrderEvent::Cancelled(e) | OrderEvent::Expired(e) => {
                // decide.lua returns a prize's units when its order is
                // released, once.
                if let Some(p) = &e.prize_id {
                    if self.released.insert(e.order_id.clone()) {
                        if let Some(i) = self.table.index(p) {
                            self.table.left[i] += i64::from(e.quantity);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// One recorded draw: `recorded` is the prize it won, `None` a loss.
    fn draw(
        &mut self,
        offset: (i32, i64),
        request_id: &str,
        user_id: &str,
        recorded: Option<&str>,
    ) {
        if let Some(first) = self.draws.get(request_id) {
            // A redelivery repeats the first decision, and changes nothing.
            if first.recorded.as_deref() != recorded {
                let was = first.recorded.clone();
                self.mismatches.push(format!(
                    "offset {}/{}: request {request_id} decided again with {}, first with {}",
                    offset.0,
                    offset.1,
                    recorded.map_or("a loss".to_owned(), |p| format!("prize {p:?}")),
                    was.map_or("a loss".to_owned(), |p| format!("prize {p:?}")),
                ));
            }
            return;
        }
        let u = self.secret.point(request_id);
        let want = self.table.draw(u);
        let got = match recorded {
            None => None,
            Some(p) => match self.table.index(p) {
                Some(i) => Some(i),
                None => {
                    self.mismatches.push(format!(
                        "offset {}/{}: request {request_id} (user {user_id}) won prize {p:?}, \
                         which the campaign does not have",
                        offset.0, offset.1
                    ));
                    self.record(request_id, user_id, recorded, false);
                    return;
                }
            },
        };
        let verified = want == got;
        if !verified {
            self.mismatches.push(format!(
                "offset {}/{}: request {request_id} (user {user_id}) drew {u}, which gives {}; \
                 the log records {}",
                offset.0,
                offset.1,
                self.name(want),
                self.name(got)
            ));
        }
        // The log is what the processors did: replay on from it.
        if let Some(i) = got {
            self.table.left[i] -= 1;
        }
        self.record(request_id, user_id, recorded, verified);
    }

    fn record(&mut self, request_id: &str, user_id: &str, recorded: Option<&str>, verified: bool) {
        self.order.push(request_id.to_owned());
        self.draws.insert(
            request_id.to_owned(),
            Draw {
                request_id: request_id.to_owned(),
                user_id: user_id.to_owned(),
                recorded: recorded.map(str::to_owned),
                verified,
            },
        );
    }
}

impl VerifyDrawsCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let cid = self.campaign.clone();
        let view = self.view().await?;
        if view.kind != CampaignKind::Lottery {
            bail!("campaign {cid:?} is not a lottery: it has no draws to verify");
        }
        let Some(revealed) = view.draw_secret.as_deref() else {
            bail!(
                "campaign {cid:?} is {:?}: its draw secret is revealed only once the campaign \
                 is closed or its window has ended (ends_at {}); run verify-draws then",
                view.state,
                view.ends_at.to_rfc3339()
            );
        };
        let secret = DrawSecret::from_hex(revealed).with_context(|| {
            format!("the campaign view's draw_secret {revealed:?} is not 64 hex digits")
        })?;
        let commitment = match (&self.commitment, &view.draw_commitment) {
            (Some(c), _) | (None, Some(c)) => c.clone(),
            (None, None) => bail!("campaign {cid:?}: the view shows no draw_commitment"),
        };
        let mut replay = Replay::new(&view.definition, secret.clone());
        if !secret.matches(&commitment) {
            replay.mismatches.push(format!(
                "the revealed secret does not match the commitment {commitment}: SHA-256 of the \
                 secret is {}",
                secret.commitment()
            ));
        }
        if let Some(c) = &view.draw_commitment {
            if self.commitment.is_some() && !c.eq_ignore_ascii_case(&commitment) {
                replay.mismatches.push(format!(
                    "the view shows the commitment {c}, not the one given ({commitment})"
                ));
            }
        }

        // The log: a campaign's events share its partition, in decision
        // order. Collected per partition, then replayed.
        let settings = self.kafka.settings();
        let topic = self.kafka.topics().orders;
        let consumer =
            settings.reader(&format!("{topic}.verify-draws-{}", uuid::Uuid::new_v4()))?;
        let mut by_partition: BTreeMap<i32, Vec<(i64, OrderEvent)>> = BTreeMap::new();
        let mut unreadable = 0usize;
        read_range(
            &consumer,
            &topic,
            |_, low| low,
            |m| {
                if m.key() == Some(cid.as_bytes()) {
                    match m.payload().map(OrderEvent::from_json) {
                        Some(Ok(e)) => by_partition
                            .entry(m.partition())
                            .or_default()
                            .push((m.offset(), e)),
                        _ => unreadable += 1,
                    }
                }
                Ok(true)
            },
        )
        .await?;
        if by_partition.len() > 1 {
            tracing::warn!(
                partitions = ?by_partition.keys().collect::<Vec<_>>(),
                "the campaign's events are on more than one partition; replaying them partition \
                 by partition"
            );
        }
        for (p, events) in &mut by_partition {
            events.sort_by_key(|(o, _)| *o);
            for (o, e) in events.iter() {
                replay.fold((*p, *o), e);
            }
        }
        if let Some(logged) = &replay.logged_spec {
            if logged != &view.definition {
                replay.mismatches.push(
                    "the definition in the orders log's create differs from the campaign view's"
                        .to_owned(),
                );
            }
        }

        // The store: every lottery order is a verified win of the same
        // user and prize, and every win has its order.
        let store = crate::roles::store(&self.store).await?;
        let stored = seckill_cli::check::stored_orders(&*store, &cid).await?;
        let wins: HashMap<String, &Draw> = replay
            .draws
            .values()
            .filter(|d| d.recorded.is_some())
            .map(|d| (order_id_for(&d.request_id), d))
            .collect();
        let mut store_mismatches = Vec::new();
        let mut seen = HashSet::new();
        for o in &stored {
            seen.insert(o.order_id.clone());
            let Some(d) = wins.get(&o.order_id) else {
                store_mismatches.push(format!(
                    "stored order {} (request {}, user {}, prize {:?}) is no winning draw in \
                     the orders log",
                    o.order_id, o.request_id, o.user_id, o.prize_id
                ));
                continue;
            };
            if o.prize_id != d.recorded || o.user_id != d.user_id || o.request_id != d.request_id {
                store_mismatches.push(format!(
                    "stored order {} holds prize {:?} for user {} (request {}); its draw won \
                     prize {:?} for user {} (request {})",
                    o.order_id,
                    o.prize_id,
                    o.user_id,
                    o.request_id,
                    d.recorded,
                    d.user_id,
                    d.request_id
                ));
            } else if !d.verified {
                store_mismatches.push(format!(
                    "stored order {} is the prize of draw {}, which the secret does not give",
                    o.order_id, d.request_id
                ));
            }
        }
        let mut missing: Vec<String> = wins
            .iter()
            .filter(|(id, _)| !seen.contains(*id))
            .map(|(id, d)| {
                format!(
                    "winning draw {} (user {}, prize {:?}) has no order {id} in the store (if \
                     the sinks are behind, run again once they have caught up)",
                    d.request_id,
                    d.user_id,
                    d.recorded.as_deref().unwrap_or_default()
                )
            })
            .collect();
        missing.sort();
        store_mismatches.extend(missing);

        let draws = replay.order.len();
        let won = replay
            .draws
            .values()
            .filter(|d| d.recorded.is_some())
            .count();
        let mut mismatches = replay.mismatches;
        mismatches.extend(store_mismatches);
        for m in &mismatches {
            println!("mismatch: {m}");
        }
        println!(
            "campaign {cid}: {draws} draws checked ({won} won, {} lost), {} stored orders \
             checked, {} mismatch(es); secret {} matches commitment {}: {}",
            draws - won,
            stored.len(),
            mismatches.len(),
            secret.to_hex(),
            commitment,
            secret.matches(&commitment)
        );
        println!(
            "{}",
            json!({
                "campaign": cid,
                "draws_checked": draws,
                "wins": won,
                "losses": draws - won,
                "stored_orders_checked": stored.len(),
                "commitment": commitment,
                "secret": secret.to_hex(),
                "commitment_matches": secret.matches(&commitment),
                "unreadable_events": unreadable,
                "mismatches": mismatches.len(),
                "details": mismatches,
            })
        );
        if !mismatches.is_empty() {
            bail!(
                "campaign {cid:?}: {} mismatch(es) between the draws and the revealed secret \
                 (listed above)",
                mismatches.len()
            );
        }
        Ok(())
    }

    async fn view(&self) -> anyhow::Result<CampaignView> {
        let url = format!(
            "{}/v1/campaigns/{}",
            self.api.trim_end_matches('/'),
            self.campaign
        );
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        let mut req = client.get(&url);
        if let Some(t) = &self.api_token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("GET {url} (is ingest running? see --api)"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("GET {url} answered {status}: {body}");
        }
        serde_json::from_str(&body)
            .with_context(|| format!("GET {url}: not a campaign view: {body}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seckill_schemas::Reserved;

    fn prize(id: &str, stock: u64, p: f64) -> PrizeSpec {
        PrizeSpec {
            id: id.into(),
            name: id.into(),
            stock,
            probability: p,
            award_type: Default::default(),
            price: Some(0),
        }
    }

    fn table(strategy: DrawStrategy, prizes: Vec<PrizeSpec>) -> Table {
        let total = prizes.iter().map(|p| p.stock as i64).collect::<Vec<_>>();
        Table {
            prizes,
            strategy,
            left: total.clone(),
            total,
        }
    }

    #[test]
    fn fixed_turns_a_sold_out_band_into_a_loss_and_renormalize_shares_it() {
        let prizes = vec![prize("a", 0, 0.1), prize("b", 5, 0.1)];
        let fixed = table(DrawStrategy::Fixed, prizes.clone());
        assert_eq!(fixed.draw(0.05), None, "a's band, a sold out: lost");
        assert_eq!(fixed.draw(0.15), Some(1));
        assert_eq!(fixed.draw(0.25), None);
        let renorm = table(DrawStrategy::Renormalize, prizes);
        // b takes a's share: b's band is [0, 0.2).
        assert_eq!(renorm.draw(0.05), Some(1));
        assert_eq!(renorm.draw(0.19), Some(1));
        assert_eq!(renorm.draw(0.21), None);
    }

    fn spec() -> CampaignSpec {
        CampaignSpec {
            id: "c".into(),
            name: "c".into(),
            kind: CampaignKind::Lottery,
            stock: 1,
            win_rate: Some(0.5),
            ..CampaignSpec::default()
        }
    }

    fn won(rid: &str, user: &str, prize: &str) -> OrderEvent {
        OrderEvent::Confirmed(Reserved {
            schema_version: 1,
            request_id: rid.into(),
            order_id: order_id_for(rid),
            campaign_id: "c".into(),
            user_id: user.into(),
            quantity: 1,
            price: 0,
            requested_at_ms: 0,
            decided_at_ms: 0,
            expires_at_ms: 0,
            prize_id: Some(prize.into()),
            item_name: "c".into(),
            award_type: Default::default(),
        })
    }

    #[test]
    fn a_replay_accepts_the_draws_the_secret_gives_and_names_any_other() {
        let secret = DrawSecret::derive(b"verify-test-draw-key", "c");
        let pick = |win: bool, from: usize| {
            (from..)
                .map(|i| format!("r{i}"))
                .find(|r| (secret.point(r) < 0.5) == win)
                .expect("a request id")
        };
        let (w1, w2) = (pick(true, 0), pick(true, 1000));
        let mut r = Replay::new(&spec(), secret.clone());
        r.fold((0, 0), &won(&w1, "u1", "item"));
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        // The one unit is gone: the next winning point draws a loss, so a
        // recorded win is a mismatch...
        r.fold((0, 1), &won(&w2, "u2", "item"));
        assert_eq!(r.mismatches.len(), 1, "{:?}", r.mismatches);
        assert!(r.mismatches[0].contains(&w2), "{}", r.mismatches[0]);
        // ...and a redelivery of the first draw is not a new draw.
        r.fold((0, 2), &won(&w1, "u1", "item"));
        assert_eq!(r.mismatches.len(), 1);
        assert_eq!(r.order.len(), 2);
        assert!(r.draws[&w1].verified && !r.draws[&w2].verified);
    }
}
