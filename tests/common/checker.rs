//! The invariant checker of `seckill_cli::check` (the code `seckill bench`
//! reports with) bound to one stack: it reads the order store directly, the
//! Redis counters and the whole orders topic, with no HTTP in between. The
//! suites that break things on purpose (recovery, dead letters) use it;
//! `common::check_campaign` is the same checker fed with what an HTTP-side
//! test knows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use seckill_cli::check::{
    check_campaign_with, read_order_log, redis_stock, stored_orders, CampaignReport,
    DecisionRecord, Evidence, OrderLog,
};
use seckill_kafka::KafkaSettings;
use seckill_schemas::{DecisionStatus, KeyLayout, OrderView};
use seckill_store::OrderStore;

use super::Stack;

/// The invariant checker bound to one stack: its own store handle (the
/// SQLite file the sink writes), Redis connection and orders topic.
pub(crate) struct Checker {
    pub(crate) store: Arc<dyn OrderStore>,
    pub(crate) redis: ConnectionManager,
    pub(crate) keys: KeyLayout,
    pub(crate) kafka: KafkaSettings,
    pub(crate) orders_topic: String,
}

impl Checker {
    pub(crate) async fn new(stack: &Stack) -> Checker {
        let store = seckill_store::open_store(&stack.store_url())
            .await
            .unwrap_or_else(|e| panic!("open the order store {}: {e}", stack.store_url()));
        let redis = seckill_processors::connect_redis(&stack.redis_url())
            .await
            .unwrap_or_else(|e| panic!("connect to redis: {e}"));
        Checker {
            store,
            redis,
            keys: stack.keys.clone(),
            kafka: stack.kafka(),
            orders_topic: stack.topics.orders.clone(),
        }
    }

    pub(crate) async fn log(&self) -> OrderLog {
        read_order_log(&self.kafka, &self.orders_topic)
            .await
            .unwrap_or_else(|e| panic!("read {}: {e:#}", self.orders_topic))
    }

    pub(crate) async fn orders(&self, cid: &str) -> Vec<OrderView> {
        let mut orders = stored_orders(&*self.store, cid)
            .await
            .unwrap_or_else(|e| panic!("list orders of {cid}: {e:#}"));
        orders.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        orders
    }

    pub(crate) async fn stock(&mut self, cid: &str) -> (i64, i64, i64, i64) {
        redis_stock(&mut self.redis, &self.keys, cid)
            .await
            .unwrap_or_else(|e| panic!("redis stock of {cid}: {e:#}"))
    }

    pub(crate) async fn check(
        &mut self,
        cid: &str,
        limit: u32,
        sent: &[String],
        log: &OrderLog,
    ) -> anyhow::Result<CampaignReport> {
        check_campaign_with(
            &*self.store,
            &mut self.redis,
            &self.keys,
            cid,
            limit,
            &Evidence {
                decisions: &[],
                log: Some(log),
                sent,
            },
        )
        .await
    }

    /// Reads the orders topic and checks the campaign until nothing is
    /// left to settle (see `CampaignReport::unsettled`) or `timeout`
    /// passes; returns the last report and the log it was made with.
    pub(crate) async fn settled(
        &mut self,
        cid: &str,
        limit: u32,
        sent: &[String],
        timeout: Duration,
    ) -> (CampaignReport, OrderLog) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log().await;
            match self.check(cid, limit, sent, &log).await {
                Ok(r) if r.unsettled() == 0 || Instant::now() >= deadline => return (r, log),
                Ok(_) => {}
                Err(e) if Instant::now() >= deadline => panic!("checking {cid}: {e:#}"),
                Err(e) => eprintln!("checking {cid} failed, retrying: {e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The first decision of each of `sent` on the log (`None`: undecided),
/// e.g. for `tally`.
pub(crate) fn first_decisions<'a>(
    log: &'a OrderLog,
    sent: &'a [String],
) -> impl Iterator<Item = Option<&'a DecisionRecord>> + 'a {
    sent.iter().map(move |r| log.first(r))
}

/// How many of `sent` were first decided `reserved`.
pub(crate) fn reserved_of(log: &OrderLog, sent: &[String]) -> usize {
    sent.iter()
        .filter(|r| log.first(r).map(|d| d.status) == Some(DecisionStatus::Reserved))
        .count()
}

/// Waits until every one of `sent` has a decision event on the orders
/// topic; returns that log.
pub(crate) async fn wait_all_decided(checker: &Checker, sent: &[String], secs: u64) -> OrderLog {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let log = checker.log().await;
        let missing = sent.iter().filter(|r| log.first(r).is_none()).count();
        if missing == 0 {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} requests still undecided after {secs}s",
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
