//! The processor's side of stock buckets (see `seckill_schemas::buckets`
//! for the contract and `decide.lua`, "Stock buckets", for the invariants):
//!
//! - before a batch is decided, a purchase that sits under another key of
//!   its campaign than its user's bucket (an upstream service keyed it by
//!   the bare campaign id, say) is taken out and forwarded to its bucket's
//!   key, where it is decided once, in order with that bucket's requests;
//! - once decided, the records the script adds for buckets are read here:
//!   purchases parked for want of units (nothing to announce yet), parked
//!   purchases decided now (their decisions are announced like any), and
//!   the borrow and transfer commands to send to sibling buckets, signed
//!   with the command key for the bucket they are keyed to.
//!
//! Every command is sent before the batch's offsets are stored, and is
//! part of the recorded answer of the operation that made it: a batch
//! redelivered after a crash sends it again under the same request id,
//! and the bucket that gets it twice answers the second from its record.

use std::time::Duration;

use rdkafka::producer::FutureRecord;

use seckill_kafka::{partition_for, retry_until, Backoff};
use seckill_schemas::buckets::shares;
use seckill_schemas::state::Answer;
use seckill_schemas::{
    bucket_key, bucket_of, split_key, CampaignAction, CampaignCommand, CampaignOutcome,
    CampaignSpec, OrderEvent, PurchaseRequested, RequestEvent, SCHEMA_VERSION,
};

use crate::batch::{Batch, Misplaced};
use crate::internal_events;
use crate::translate::{translate, Translated};
use crate::worker::Worker;

/// Takes out of `batch` every purchase keyed to another bucket of its
/// campaign than its user's, and queues it for forwarding to its own
/// bucket's key. Returns `None` only when stopped first.
pub(crate) async fn route(worker: &Worker, batch: &mut Batch) -> Option<()> {
    let partitions = worker.partition_count().await;
    let mut parts = std::mem::take(&mut batch.campaigns);
    for part in &mut parts {
        let Some((base, bucket)) = split_key(&part.campaign_id) else {
            continue;
        };
        if !part
            .requests
            .iter()
            .any(|r| matches!(r.event, RequestEvent::PurchaseRequested(_)))
        {
            continue;
        }
        let spec = retry_until(
            worker.cancel(),
            Backoff::STEP,
            || {
                let mut con = worker.redis();
                async move { worker.definition(&mut con, base).await }
            },
            |e| internal_events::step_failed("route", e),
        )
        .await?;
        // Unknown campaign: bucket 0 answers it, under the campaign's own
        // keys.
        let count = spec.as_deref().map_or(1, CampaignSpec::bucket_count);
        if count == 1 && bucket == 0 {
            continue;
        }
        let requests = std::mem::take(&mut part.requests);
        for r in requests {
            let RequestEvent::PurchaseRequested(p) = &r.event else {
                part.requests.push(r);
                continue;
            };
            let own = bucket_of(&p.user_id, count);
            if own == bucket {
                part.requests.push(r);
                continue;
            }
            let key = bucket_key(base, own);
            internal_events::bucket_rerouted(&part.campaign_id, &key);
            batch.misplaced.push(Misplaced {
                at: r.at,
                to: if partitions > 0 {
                    partition_for(key.as_bytes(), partitions)
                } else {
                    -1
                },
                key: Some(key),
            });
        }
    }
    parts.retain(|p| !p.requests.is_empty());
    batch.campaigns = parts;
    Some(())
}

/// A command for a sibling bucket, signed on sending.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BucketCommand {
    /// The bucket it is keyed to.
    pub(crate) to: u32,
    pub(crate) event: RequestEvent,
}

/// What the records of one request say about buckets, taken out of them
/// before [`translate`] reads the rest.
#[derive(Debug, Default)]
pub(crate) struct BucketWork {
    /// Parked purchases decided now: (request, user, requested at, decision).
    served: Vec<(String, String, i64, Answer)>,
    /// Units this bucket lent (on a borrow it decided).
    lent: Option<u64>,
    /// Commands to send.
    pub(crate) commands: Vec<BucketCommand>,
}

/// The request id of bucket `from`'s ask `ask` of its round `round`.
fn borrow_id(campaign_id: &str, from: u32, round: u64, ask: u32) -> String {
    format!("borrow.{campaign_id}.{from}.{round}.{ask}")
}

/// The request id of the answer to that ask (recorded by bucket `to`).
fn transfer_id(campaign_id: &str, to: u32, round: u64, ask: u32) -> String {
    format!("transfer.{campaign_id}.{to}.{round}.{ask}")
}

fn command(campaign_id: &str, request_id: String, action: CampaignAction) -> RequestEvent {
    RequestEvent::CampaignCommand(CampaignCommand {
        schema_version: SCHEMA_VERSION,
        request_id,
        campaign_id: campaign_id.to_owned(),
        action,
        requested_at_ms: None,
        auth: None,
    })
}

/// Splits the bucket records off `records` (the answer of `event`, decided
/// under the campaign key `key`).
pub(crate) fn take(
    key: &str,
    event: &RequestEvent,
    records: Vec<Answer>,
) -> (Vec<Answer>, BucketWork) {
    let mut work = BucketWork::default();
    let cid = event.campaign_id();
    let bucket = split_key(key).map_or(0, |(_, b)| b);
    let mut rest = Vec::with_capacity(records.len());
    for rec in records {
        match rec {
            Answer::Held { .. } => {}
            Answer::Borrow {
                to,
                want,
                round,
                ask,
            } => work.commands.push(BucketCommand {
                to,
                event: command(
                    cid,
                    borrow_id(cid, bucket, round, ask),
                    CampaignAction::Borrow {
                        from: bucket,
                        want,
                        round,
                        ask,
                    },
                ),
            }),
            Answer::Lend {
                to,
                units,
                round,
                ask,
            } => {
                work.lent = Some(units);
                work.commands.push(BucketCommand {
                    to,
                    event: command(
                        cid,
                        transfer_id(cid, to, round, ask),
                        CampaignAction::Transfer {
                            from: bucket,
                            units,
                            round,
                            ask,
                        },
                    ),
                });
            }
            Answer::Served {
                request_id,
                user_id,
                requested_at_ms,
                decision,
            } => work
                .served
                .push((request_id, user_id, requested_at_ms, *decision)),
            other => rest.push(other),
        }
    }
    (rest, work)
}

impl BucketWork {
    /// Adds the announcements of parked purchases decided now to `t`, and
    /// says on each command result which bucket applied it and what units
    /// it moved.
    pub(crate) fn finish(
        &mut self,
        key: &str,
        event: &RequestEvent,
        spec: Option<&CampaignSpec>,
        t: &mut Translated,
    ) {
        let bucket = split_key(key).map_or(0, |(_, b)| b);
        for e in &mut t.events {
            let OrderEvent::CampaignApplied(a) = e else {
                continue;
            };
            if bucket > 0 {
                a.bucket = Some(bucket);
            }
            let count = spec.map_or(1, CampaignSpec::bucket_count);
            match (event, a.outcome) {
                (RequestEvent::UpsertCampaign(u), CampaignOutcome::Created) if count > 1 => {
                    a.quantity = shares(u.campaign.stock, count)
                        .get(bucket as usize)
                        .copied();
                }
                (RequestEvent::CampaignCommand(c), CampaignOutcome::Applied) => match c.action {
                    CampaignAction::Borrow { .. } => a.quantity = self.lent,
                    CampaignAction::Transfer { units, .. } => a.quantity = Some(units),
                    _ => {}
                },
                _ => {}
            }
        }
        for (request_id, user_id, at, decision) in self.served.drain(..) {
            let parked = RequestEvent::PurchaseRequested(PurchaseRequested {
                schema_version: SCHEMA_VERSION,
                request_id,
                campaign_id: event.campaign_id().to_owned(),
                user_id,
                quantity: 1,
                requested_at_ms: Some(at),
                attributes: None,
            });
            let more = translate(&parked, vec![decision], spec, at);
            t.events.extend(more.events);
            t.lookups.extend(more.lookups);
        }
    }
}

/// Sends `commands` (of campaign keys' buckets) to the requests topic,
/// each signed for the bucket it is keyed to and acknowledged before this
/// returns. Returns false only when stopped first.
pub(crate) async fn send(worker: &Worker, commands: &[BucketCommand]) -> bool {
    let config = worker.config();
    for c in commands {
        let mut event = c.event.clone();
        match config.command_keys.first() {
            Some(k) => event.sign_for_bucket(k, c.to),
            None => tracing::error!(
                "no command key to sign a stock bucket's command with: it will be dead-lettered"
            ),
        }
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        let key = bucket_key(event.campaign_id(), c.to);
        let sent = retry_until(
            worker.cancel(),
            Backoff::STEP,
            || {
                let record = FutureRecord::to(&config.topics.requests)
                    .key(key.as_str())
                    .payload(payload.as_slice());
                worker.producer().send(record, Duration::from_secs(30))
            },
            |(e, _)| internal_events::step_failed("bucket_command", e),
        )
        .await;
        if sent.is_none() {
            return false;
        }
        if let RequestEvent::CampaignCommand(cmd) = &event {
            match cmd.action {
                CampaignAction::Transfer { units, .. } => {
                    internal_events::bucket_command("transfer", units)
                }
                _ => internal_events::bucket_command("borrow", 0),
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use seckill_schemas::{DecisionStatus, RefusalReason};

    fn purchase(request: &str, user: &str) -> RequestEvent {
        RequestEvent::PurchaseRequested(PurchaseRequested {
            schema_version: 1,
            request_id: request.into(),
            campaign_id: "hot".into(),
            user_id: user.into(),
            quantity: 1,
            requested_at_ms: Some(1),
            attributes: None,
        })
    }

    /// A parked purchase announces nothing; the ask it opened becomes a
    /// borrow for the sibling, and a transfer's served purchases become
    /// decisions of the campaign.
    #[test]
    fn bucket_records_become_commands_and_decisions() {
        let (rest, work) = take(
            "hot#2",
            &purchase("r1", "u1"),
            vec![
                Answer::Held { decided_at_ms: 5 },
                Answer::Borrow {
                    to: 3,
                    want: 4,
                    round: 9,
                    ask: 1,
                },
            ],
        );
        assert!(rest.is_empty());
        assert_eq!(
            work.commands,
            [BucketCommand {
                to: 3,
                event: command(
                    "hot",
                    "borrow.hot.2.9.1".into(),
                    CampaignAction::Borrow {
                        from: 2,
                        want: 4,
                        round: 9,
                        ask: 1
                    }
                ),
            }]
        );
        let mut t = translate(&purchase("r1", "u1"), rest, None, 0);
        assert!(t.events.is_empty() && t.lookups.is_empty());

        // Bucket 3 decides the borrow: its transfer back is named after the
        // ask, so a redelivered borrow sends the same transfer again.
        let borrow = work.commands[0].event.clone();
        let lend = Answer::Lend {
            to: 2,
            units: 4,
            round: 9,
            ask: 1,
        };
        for _ in 0..2 {
            let (_, work) = take("hot#3", &borrow, vec![lend.clone()]);
            assert_eq!(
                work.commands,
                [BucketCommand {
                    to: 2,
                    event: command(
                        "hot",
                        "transfer.hot.2.9.1".into(),
                        CampaignAction::Transfer {
                            from: 3,
                            units: 4,
                            round: 9,
                            ask: 1
                        }
                    ),
                }]
            );
        }

        let transfer = command(
            "hot",
            "transfer.hot.0.9.1".into(),
            CampaignAction::Transfer {
                from: 3,
                units: 2,
                round: 9,
                ask: 1,
            },
        );
        let (rest, mut work) = take(
            "hot",
            &transfer,
            vec![
                Answer::Campaign {
                    outcome: CampaignOutcome::Applied,
                    reason: None,
                    decided_at_ms: 7,
                },
                Answer::Served {
                    request_id: "r1".into(),
                    user_id: "u1".into(),
                    requested_at_ms: 3,
                    decision: Box::new(Answer::Purchase {
                        status: DecisionStatus::SoldOut,
                        reason: Some(RefusalReason::SoldOut),
                        order_id: None,
                        quantity: 0,
                        decided_at_ms: 7,
                        expires_at_ms: 0,
                        price: 0,
                        prize_id: None,
                        confirmed: false,
                    }),
                },
            ],
        );
        assert!(work.commands.is_empty());
        t = translate(&transfer, rest, None, 0);
        work.finish("hot", &transfer, None, &mut t);
        let OrderEvent::CampaignApplied(a) = &t.events[0] else {
            panic!("{:?}", t.events)
        };
        assert_eq!(
            (a.action.as_str(), a.quantity, a.bucket),
            ("transfer", Some(2), None)
        );
        let d = t.events[1].decision().expect("a decision");
        assert_eq!(
            (
                d.request_id.as_str(),
                d.user_id.as_str(),
                d.campaign_id.as_str(),
                d.status
            ),
            ("r1", "u1", "hot", DecisionStatus::SoldOut)
        );
    }
}
