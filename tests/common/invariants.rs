//! The HTTP-side suites' way into the one invariant checker
//! (`seckill_cli::check`): gathers what a test knows (the decisions HTTP
//! answered, the orders topic, the requests it sent) and runs the same
//! guarantee checks `seckill bench` and the recovery suite run, against the
//! test's own store, Redis and orders topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use seckill_cli::check::{check_campaign_with, read_order_log, DecisionRecord, Evidence};
use seckill_schemas::{Decision, DecisionStatus};

use super::{Api, DecisionLog, Stack};

/// What the checker found for one campaign.
pub(crate) type Report = seckill_cli::check::CampaignReport;

/// Checks one campaign.
///
/// `expected` lists the requests the test sent to this campaign, with the
/// decision HTTP answered (None for requests produced straight to Kafka, or
/// when HTTP gave none); each must end with a decision. `log` holds the
/// decisions the test read from the orders topic; the checker reads the
/// topic again itself (returns, statuses). Checks repeat for up to
/// `settle` until nothing is left in flight (the store catching up).
pub(crate) async fn check_campaign(
    stack: &Stack,
    api: &Api,
    log: &DecisionLog,
    campaign: &str,
    expected: &HashMap<String, Option<Decision>>,
    settle: Duration,
) -> Report {
    let view = api
        .campaign(campaign)
        .await
        .unwrap_or_else(|e| panic!("invariants: {e}"));
    let store = seckill_store::open_store(&stack.store_url())
        .await
        .unwrap_or_else(|e| panic!("open the order store {}: {e}", stack.store_url()));
    let mut redis = seckill_processors::connect_redis(&stack.redis_url())
        .await
        .unwrap_or_else(|e| panic!("connect to redis: {e}"));
    let mut announced: Vec<DecisionRecord> = log
        .campaign(campaign)
        .flat_map(|(_, ds)| ds.iter().map(DecisionRecord::from))
        .collect();
    announced.extend(
        expected
            .values()
            .flatten()
            .filter(|d| d.status != DecisionStatus::Pending)
            .map(DecisionRecord::from),
    );
    let decisions: Vec<&DecisionRecord> = announced.iter().collect();
    let sent: Vec<String> = expected.keys().cloned().collect();
    let deadline = Instant::now() + settle;
    loop {
        let orders = read_order_log(&stack.kafka(), &stack.topics.orders)
            .await
            .unwrap_or_else(|e| panic!("read {}: {e:#}", stack.topics.orders));
        let evidence = Evidence {
            decisions: &decisions,
            log: Some(&orders),
            sent: &sent,
        };
        let report = check_campaign_with(
            &*store,
            &mut redis,
            &stack.keys,
            campaign,
            view.per_user_limit,
            &evidence,
        )
        .await;
        match report {
            Ok(r) if r.unsettled() == 0 || Instant::now() >= deadline => return r,
            Ok(_) => {}
            Err(e) if Instant::now() >= deadline => panic!("checking {campaign}: {e:#}"),
            Err(e) => eprintln!("checking {campaign} failed, retrying: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
