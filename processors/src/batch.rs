//! One batch as it moves through the processor: read messages, the requests
//! among them grouped by campaign, and the messages that can never be
//! decided.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::DeliveryFuture;
use seckill_kafka::{partition_for, ErrorClass};
use seckill_schemas::{CampaignSpec, RequestEvent};

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
            let event = match parse(m).and_then(|e| admit(e, keys, enable_reset)) {
                Ok(event) => event,
                Err((class, reason)) => {
                    undecidable.push(Undecidable { at, class, reason });
                    continue;
                }
            };
            if partitions > 0 {
                // parse() checked that the key is the campaign id.
                let to = partition_for(event.campaign_id().as_bytes(), partitions);
                if to != m.partition() {
                    misplaced.push(Misplaced { at, to });
                    continue;
                }
            }
            let cid = event.campaign_id();
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
fn parse(message: &OwnedMessage) -> Result<RequestEvent, (ErrorClass, String)> {
    let unparseable = |e: String| (ErrorClass::Unparseable, e);
    let payload = message
        .payload()
        .ok_or_else(|| unparseable("empty payload".into()))?;
    let event: RequestEvent = serde_json::from_slice(payload)
        .map_err(|e| unparseable(format!("invalid JSON request event: {e}")))?;
    event
        .validate()
        .map_err(|e| (ErrorClass::Permanent, format!("invalid request event: {e}")))?;
    // The key decides the partition and so the campaign's single writer; a
    // message keyed differently would be decided out of order.
    if message.key() != Some(event.campaign_id().as_bytes()) {
        return Err((
            ErrorClass::Permanent,
            format!(
                "message key must equal campaign_id {:?}",
                event.campaign_id()
            ),
        ));
    }
    Ok(event)
}

/// Whether this processor may decide `event`: a command must carry a valid
/// authenticator, and a reset needs the processor's own consent.
fn admit(
    event: RequestEvent,
    keys: &[Vec<u8>],
    enable_reset: bool,
) -> Result<RequestEvent, (ErrorClass, String)> {
    event
        .verify(keys)
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
