//! One batch as it moves through the processor: read messages, the requests
//! among them grouped by campaign, and the messages that can never be
//! decided.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::DeliveryFuture;
use seckill_kafka::{partition_for, ErrorClass};
use seckill_schemas::{split_key, CampaignSpec, RequestEvent};

use seckill_schemas::state::Answer;

/// A request of the batch and where it came from.
pub(crate) struct Request {
    /// Index of its message in [`Batch::messages`].
    pub(crate) at: usize,
    pub(crate) event: RequestEvent,
}

/// One campaign's requests of a batch, in offset order, and once decided
/// the campaign's stored definition and each request's records.
pub(crate) struct CampaignPart {
    /// The campaign's key: its id, or `<id>#<b>` for its stock bucket b
    /// (each bucket is a part of its own, with its own Redis keys).
    pub(crate) campaign_id: String,
    pub(crate) requests: Vec<Request>,
    /// The stored definition, when the campaign exists (filled by deciding).
    pub(crate) spec: Option<Arc<CampaignSpec>>,
    /// Per request, in the same order (filled by deciding).
    pub(crate) outcomes: Vec<Vec<Answer>>,
}

/// A message that can never be decided, and why.
pub(crate) struct Undecidable {
    pub(crate) at: usize,
    pub(crate) class: ErrorClass,
    pub(crate) reason: String,
}

/// A message on another partition than its key maps to under murmur2 (an
/// upstream producer with another partitioner): it is forwarded to its
/// own partition, whose processor decides it in order with the campaign's
/// commands, and never decided here.
pub(crate) struct Misplaced {
    pub(crate) at: usize,
    pub(crate) to: i32,
    /// The key to forward it under, when not its own (a purchase sent to
    /// another stock bucket than its user's, see `crate::buckets`).
    pub(crate) key: Option<String>,
}

/// A batch read from the requests topic.
pub(crate) struct Batch {
    pub(crate) messages: Vec<OwnedMessage>,
    /// Campaigns in order of first appearance.
    pub(crate) campaigns: Vec<CampaignPart>,
    pub(crate) undecidable: Vec<Undecidable>,
    pub(crate) misplaced: Vec<Misplaced>,
}

impl Batch {
    /// Parses `messages` and groups the requests by campaign, keeping offset
    /// order inside each campaign. `partitions` is the topic's partition
    /// count (0 when unknown: then placement is not checked).
    /// `keys` are the command keys; a command that none of them
    /// authenticates, or a reset while `enable_reset` is off, can never be
    /// decided.
    pub(crate) fn new(
        messages: Vec<OwnedMessage>,
        partitions: i32,
        keys: &[Vec<u8>],
        enable_reset: bool,
    ) -> Self {
        let mut campaigns: Vec<CampaignPart> = Vec::new();
        let mut slots: HashMap<String, usize> = HashMap::new();
        let mut undecidable = Vec::new();
        let mut misplaced = Vec::new();
        for (at, m) in messages.iter().enumerate() {
            let event = match parse(m).and_then(|(e, bucket)| admit(e, keys, enable_reset, bucket))
            {
                Ok(event) => event,
                Err((class, reason)) => {
                    undecidable.push(Undecidable { at, class, reason });
                    continue;
                }
            };
            // parse() checked that the key is the campaign id, or the key of
            // one of its stock buckets.
            let key = m.key().unwrap_or_default();
            if partitions > 0 {
                let to = partition_for(key, partitions);
                if to != m.partition() {
                    misplaced.push(Misplaced { at, to, key: None });
                    continue;
                }
            }
            let cid = std::str::from_utf8(key).unwrap_or_default();
            let slot = match slots.get(cid) {
                Some(&slot) => slot,
                None => {
                    slots.insert(cid.to_owned(), campaigns.len());
                    campaigns.push(CampaignPart {
                        campaign_id: cid.to_owned(),
                        requests: Vec::new(),
                        spec: None,
                        outcomes: Vec::new(),
                    });
                    campaigns.len() - 1
                }
            };
            campaigns[slot].requests.push(Request { at, event });
        }
        Self {
            messages,
            campaigns,
            undecidable,
            misplaced,
        }
    }
}

/// Why a message can never be decided: unreadable, or readable but not a
/// valid request (both go to the requests DLQ at once).
fn parse(message: &OwnedMessage) -> Result<(RequestEvent, u32), (ErrorClass, String)> {
    let unparseable = |e: String| (ErrorClass::Unparseable, e);
    let payload = message
        .payload()
        .ok_or_else(|| unparseable("empty payload".into()))?;
    let event = RequestEvent::from_json(payload)
        .map_err(|e| unparseable(format!("invalid JSON request event: {e}")))?;
    event
        .validate()
        .map_err(|e| (ErrorClass::Permanent, format!("invalid request event: {e}")))?;
    // The key decides the partition and so the campaign's single writer; a
    // message keyed differently would be decided out of order. A campaign
    // with stock buckets has a key per bucket (`<id>#<b>`).
    let bucket = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(split_key)
        .and_then(|(id, b)| (id == event.campaign_id()).then_some(b));
    let Some(bucket) = bucket else {
        return Err((
            ErrorClass::Permanent,
            format!(
                "message key must equal campaign_id {:?} (or, for its stock bucket b, \
                 \"{}#<b>\")",
                event.campaign_id(),
                event.campaign_id()
            ),
        ));
    };
    Ok((event, bucket))
}

/// Whether this processor may decide `event`, keyed to stock bucket
/// `bucket` of its campaign: a command must carry a valid authenticator
/// for that bucket, and a reset needs the processor's own consent.
fn admit(
    event: RequestEvent,
    keys: &[Vec<u8>],
    enable_reset: bool,
    bucket: u32,
) -> Result<RequestEvent, (ErrorClass, String)> {
    event
        .verify_for_bucket(keys, bucket)
        .map_err(|e| (ErrorClass::Unauthenticated, e.to_string()))?;
    if let RequestEvent::CampaignCommand(c) = &event {
        if matches!(c.action, seckill_schemas::CampaignAction::Reset) && !enable_reset {
            return Err((
                ErrorClass::Permanent,
                "reset is disabled on this processor (SECKILL_ENABLE_RESET is for test \
                 environments)"
                    .to_owned(),
            ));
        }
    }
    Ok(event)
}

/// A decided batch on its way to the broker.
pub(crate) struct InFlight {
    pub(crate) messages: Vec<OwnedMessage>,
    /// (campaign, event JSON) per event to publish.
    pub(crate) payloads: Vec<(String, Vec<u8>)>,
    /// The producer's receipts: (index in `payloads`, receipt).
    pub(crate) deliveries: Vec<(usize, DeliveryFuture)>,
    /// Repair fences decided in this batch: (campaign, token).
    pub(crate) fences: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use seckill_schemas::{OrderAction, OrderCommand};

    const KEY: &[u8] = b"batch-test-command-key";

    fn pay(request: &str, payment_ref: Option<&str>) -> RequestEvent {
        RequestEvent::OrderCommand(OrderCommand {
            schema_version: 1,
            request_id: request.into(),
            campaign_id: "c1".into(),
            order_id: "o1".into(),
            user_id: "payments-svc".into(),
            action: OrderAction::Pay,
            requested_at_ms: None,
            payment_ref: payment_ref.map(str::to_owned),
            auth: None,
        })
    }

    fn message(event: &RequestEvent, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(serde_json::to_vec(event).expect("encodes")),
            Some(event.campaign_id().as_bytes().to_vec()),
            "seckill.requests".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    /// A pay without a payment reference never reaches the script, and the
    /// reference is covered by the command's authenticator.
    #[test]
    fn a_pay_needs_a_signed_payment_ref() {
        let mut without = pay("no-ref", None);
        without.sign(KEY);
        let mut altered = pay("altered", Some("psp-1"));
        altered.sign(KEY);
        if let RequestEvent::OrderCommand(c) = &mut altered {
            c.payment_ref = Some("psp-2".into());
        }
        let mut good = pay("good", Some("psp-1"));
        good.sign(KEY);
        let mut cancel = RequestEvent::OrderCommand(OrderCommand {
            request_id: "cancel-ref".into(),
            action: OrderAction::Cancel,
            ..match pay("x", Some("psp-1")) {
                RequestEvent::OrderCommand(c) => c,
                _ => unreachable!(),
            }
        });
        cancel.sign(KEY);
        let messages = [&without, &altered, &good, &cancel]
            .iter()
            .zip(0..)
            .map(|(e, i)| message(e, i))
            .collect();
        let batch = Batch::new(messages, 0, &[KEY.to_vec()], false);
        let refused: Vec<(usize, ErrorClass, &str)> = batch
            .undecidable
            .iter()
            .map(|u| (u.at, u.class, u.reason.as_str()))
            .collect();
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert_eq!((refused[0].0, refused[0].1), (0, ErrorClass::Permanent));
        assert!(
            refused[0].2.contains("payment_ref: a pay needs"),
            "{}",
            refused[0].2
        );
        assert_eq!(
            (refused[1].0, refused[1].1),
            (1, ErrorClass::Unauthenticated)
        );
        assert_eq!((refused[2].0, refused[2].1), (3, ErrorClass::Permanent));
        assert!(
            refused[2]
                .2
                .contains("a cancel carries no payment reference"),
            "{}",
            refused[2].2
        );
        let decided: Vec<&str> = batch
            .campaigns
            .iter()
            .flat_map(|c| c.requests.iter().map(|r| r.event.request_id()))
            .collect();
        assert_eq!(decided, ["good"]);
    }
}
