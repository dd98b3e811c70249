//! Turns the script's records for one request into the events to publish
//! and the lookups to record. Pure: no I/O, so every mapping is testable.

use seckill_schemas::{
    AwardType, CampaignAction, CampaignApplied, CampaignOutcome, CampaignSpec, DecisionStatus,
    OrderAction, OrderChanged, OrderCommandRejected, OrderCommandResult, OrderEvent, OrderStatus,
    RefusalReason, Rejected, RequestEvent, Reserved, SCHEMA_VERSION,
};

use seckill_schemas::state::{Answer, OrderRecord};

/// A Redis write that makes a result findable without its campaign.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lookup {
    /// request id -> the result as API JSON.
    Result { request_id: String, json: String },
    /// order id -> its campaign, so pay/cancel by order id can be keyed.
    OrderCampaign { order_id: String },
    /// A new campaign joins the set the expiry sweeper walks.
    NewCampaign,
}

/// What one request produced.
#[derive(Debug, Default)]
pub(crate) struct Translated {
    pub(crate) events: Vec<OrderEvent>,
    pub(crate) lookups: Vec<Lookup>,
}

/// Name and award type of what an order holds: the prize, else the
/// campaign's item.
fn item(spec: Option<&CampaignSpec>, prize_id: Option<&str>) -> (String, AwardType) {
    match (spec, prize_id) {
        (Some(s), Some(id)) => match s.prize(id) {
            Some(p) => (p.name, p.award_type),
            None => (id.to_owned(), AwardType::default()),
        },
        (Some(s), None) => (s.name.clone(), s.award_type.unwrap_or_default()),
        (None, Some(id)) => (id.to_owned(), AwardType::default()),
        (None, None) => (String::new(), AwardType::default()),
    }
}

fn changed(
    request_id: &str,
    campaign_id: &str,
    o: OrderRecord,
    decided_at_ms: i64,
    spec: Option<&CampaignSpec>,
) -> OrderChanged {
    let (item_name, award_type) = item(spec, o.prize_id.as_deref());
    OrderChanged {
        schema_version: SCHEMA_VERSION,
        request_id: request_id.to_owned(),
        order_id: o.order_id,
        purchase_request_id: o.purchase_request_id,
        campaign_id: campaign_id.to_owned(),
        user_id: o.user_id,
        quantity: o.quantity,
        price: o.price,
        created_at_ms: o.created_at_ms,
        expires_at_ms: o.expires_at_ms,
        decided_at_ms,
        prize_id: o.prize_id,
        item_name,
        award_type,
        payment_ref: o.payment_ref,
    }
}

fn transition_event(to: OrderStatus, c: OrderChanged) -> Option<OrderEvent> {
    match to {
        OrderStatus::Paid => Some(OrderEvent::Paid(c)),
        OrderStatus::Cancelled => Some(OrderEvent::Cancelled(c)),
        OrderStatus::Expired => Some(OrderEvent::Expired(c)),
        OrderStatus::Reserved => None,
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Maps the records the script returned for `event` to events and lookups.
/// `message_ms` stands in for a request time the producer did not set.
pub(crate) fn translate(
    event: &RequestEvent,
    records: Vec<Answer>,
    spec: Option<&CampaignSpec>,
    message_ms: i64,
) -> Translated {
    let mut out = Translated::default();
    let campaign_id = event.campaign_id();
    match event {
        RequestEvent::PurchaseRequested(r) => {
            let requested_at_ms = r.requested_at_ms.unwrap_or(message_ms);
            for rec in records {
                let Answer::Purchase {
                    status,
                    reason,
                    order_id,
                    quantity,
                    decided_at_ms,
                    expires_at_ms,
                    price,
                    prize_id,
                    confirmed,
                } = rec
                else {
                    out.events.push(reused(event, message_ms));
                    continue;
                };
                let e = match (status, order_id) {
                    (DecisionStatus::Reserved | DecisionStatus::Won, Some(order_id)) => {
                        out.lookups.push(Lookup::OrderCampaign {
                            order_id: order_id.clone(),
                        });
                        let (item_name, award_type) = item(spec, prize_id.as_deref());
                        let reserved = Reserved {
                            schema_version: SCHEMA_VERSION,
                            request_id: r.request_id.clone(),
                            order_id,
                            campaign_id: r.campaign_id.clone(),
                            user_id: r.user_id.clone(),
                            quantity,
                            price,
                            requested_at_ms,
                            decided_at_ms,
                            expires_at_ms,
                            prize_id,
                            item_name,
                            award_type,
                        };
                        if confirmed {
                            OrderEvent::Confirmed(reserved)
                        } else {
                            OrderEvent::Reserved(reserved)
                        }
                    }
                    (status, _) => OrderEvent::Rejected(Rejected {
                        schema_version: SCHEMA_VERSION,
                        request_id: r.request_id.clone(),
                        campaign_id: r.campaign_id.clone(),
                        user_id: r.user_id.clone(),
                        status,
                        // The codec reads a decision without an order only
                        // with its reason.
                        reason: reason.unwrap_or(RefusalReason::UnknownOperation),
                        requested_at_ms,
                        decided_at_ms,
                    }),
                };
                if let Some(d) = e.decision() {
                    out.lookups.push(Lookup::Result {
                        request_id: r.request_id.clone(),
                        json: json(&d),
                    });
                }
                out.events.push(e);
            }
        }
        RequestEvent::UpsertCampaign(_) | RequestEvent::CampaignCommand(_) => {
            let action = match event {
                RequestEvent::CampaignCommand(c) => c.action.name(),
                _ => "create",
            };
            for rec in records {
                let Answer::Campaign {
                    outcome,
                    reason,
                    decided_at_ms,
                } = rec
                else {
                    continue;
                };
                if outcome == CampaignOutcome::Created {
                    out.lookups.push(Lookup::NewCampaign);
                }
                let (campaign, quantity, prize_id) = match (event, outcome) {
                    (RequestEvent::UpsertCampaign(u), CampaignOutcome::Created) => {
                        (Some(u.campaign.clone()), None, None)
                    }
                    (RequestEvent::CampaignCommand(c), CampaignOutcome::Applied) => match &c.action
                    {
                        CampaignAction::AddStock { quantity, prize_id } => (
                            None,
                            Some(*quantity),
                            prize_id.clone().or_else(|| sole_prize(spec)),
                        ),
                        _ => (None, None, None),
                    },
                    _ => (None, None, None),
                };
                let applied = CampaignApplied {
                    schema_version: SCHEMA_VERSION,
                    request_id: event.request_id().to_owned(),
                    campaign_id: campaign_id.to_owned(),
                    outcome,
                    action: action.to_owned(),
                    reason,
                    decided_at_ms,
                    campaign,
                    quantity,
                    prize_id,
                    bucket: None,
                };
                out.lookups.push(Lookup::Result {
                    request_id: applied.request_id.clone(),
                    json: json(&applied),
                });
                out.events.push(OrderEvent::CampaignApplied(applied));
            }
        }
        RequestEvent::OrderCommand(c) => {
            let mut result = OrderCommandResult {
                request_id: c.request_id.clone(),
                order_id: c.order_id.clone(),
                accepted: false,
                status: None,
                reason: None,
            };
            for rec in records {
                match rec {
                    Answer::Transition {
                        to,
                        order,
                        decided_at_ms,
                    } => {
                        result.status = Some(to);
                        // A pay that finds the order overdue expires it
                        // first: the expiry is not what the caller asked for.
                        result.accepted = matches!(
                            (c.action, to),
                            (OrderAction::Pay, OrderStatus::Paid)
                                | (OrderAction::Cancel, OrderStatus::Cancelled)
                        );
                        let e = changed(&c.request_id, campaign_id, order, decided_at_ms, spec);
                        out.events.extend(transition_event(to, e));
                    }
                    Answer::CommandRefused {
                        reason,
                        decided_at_ms,
                    } => {
                        result.accepted = false;
                        result.status = OrderStatus::after_refusal(reason);
                        result.reason = Some(reason);
                        out.events
                            .push(OrderEvent::OrderCommandRejected(OrderCommandRejected {
                                schema_version: SCHEMA_VERSION,
                                request_id: c.request_id.clone(),
                                campaign_id: campaign_id.to_owned(),
                                order_id: c.order_id.clone(),
                                user_id: c.user_id.clone(),
                                action: c.action,
                                reason,
                                decided_at_ms,
                            }));
                    }
                    _ => {}
                }
            }
            out.lookups.push(Lookup::Result {
                request_id: c.request_id.clone(),
                json: json(&result),
            });
        }
        RequestEvent::ExpireDue(x) => {
            for rec in records {
                if let Answer::Transition {
                    to,
                    order,
                    decided_at_ms,
                } = rec
                {
                    let e = changed(&x.request_id, campaign_id, order, decided_at_ms, spec);
                    out.events.extend(transition_event(to, e));
                }
            }
        }
    }
    out
}

/// The prize stock goes to when a lottery has exactly one (as the script
/// decides it).
fn sole_prize(spec: Option<&CampaignSpec>) -> Option<String> {
    let table = spec?.draw_table();
    match table.as_slice() {
        [only] => Some(only.id.clone()),
        _ => None,
    }
}

/// A request id reused across kinds (a purchase id sent again as a command,
/// or the reverse) gets the stored answer of the other kind. Say so rather
/// than guess.
fn reused(event: &RequestEvent, message_ms: i64) -> OrderEvent {
    OrderEvent::Rejected(Rejected {
        schema_version: SCHEMA_VERSION,
        request_id: event.request_id().to_owned(),
        campaign_id: event.campaign_id().to_owned(),
        user_id: match event {
            RequestEvent::PurchaseRequested(r) => r.user_id.clone(),
            _ => String::new(),
        },
        status: DecisionStatus::NotActive,
        reason: RefusalReason::RequestIdReused,
        requested_at_ms: message_ms,
        decided_at_ms: message_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use seckill_schemas::{OrderCommand, PurchaseRequested};

    fn order() -> OrderRecord {
        OrderRecord {
            order_id: "o1".into(),
            user_id: "u1".into(),
            quantity: 1,
            price: 100,
            purchase_request_id: "r1".into(),
            created_at_ms: 1,
            expires_at_ms: 2,
            prize_id: None,
            payment_ref: None,
        }
    }

    fn command(action: OrderAction) -> RequestEvent {
        RequestEvent::OrderCommand(OrderCommand {
            schema_version: 1,
            request_id: "cmd".into(),
            campaign_id: "c".into(),
            order_id: "o1".into(),
            user_id: "u1".into(),
            action,
            requested_at_ms: None,
            payment_ref: (action == OrderAction::Pay).then(|| "ref-1".to_owned()),
            auth: None,
        })
    }

    #[test]
    fn a_late_pay_expires_and_is_refused() {
        let t = translate(
            &command(OrderAction::Pay),
            vec![
                Answer::Transition {
                    to: OrderStatus::Expired,
                    order: order(),
                    decided_at_ms: 5,
                },
                Answer::CommandRefused {
                    reason: RefusalReason::Expired,
                    decided_at_ms: 5,
                },
            ],
            None,
            0,
        );
        assert!(matches!(t.events[0], OrderEvent::Expired(_)));
        assert!(matches!(t.events[1], OrderEvent::OrderCommandRejected(_)));
        let Lookup::Result { json, .. } = &t.lookups[0] else {
            panic!()
        };
        let r: OrderCommandResult = serde_json::from_str(json).unwrap();
        assert!(!r.accepted);
        assert_eq!(r.reason, Some(RefusalReason::Expired));
        assert_eq!(r.status, Some(OrderStatus::Expired));
    }

    /// A pay's `paid` carries the reference into the event, and a pay that
    /// repeats it (same record, another request id) answers alike.
    #[test]
    fn a_pay_and_its_repeat_answer_alike_with_the_reference() {
        let paid = || Answer::Transition {
            to: OrderStatus::Paid,
            order: OrderRecord {
                payment_ref: Some("psp-1".into()),
                ..order()
            },
            decided_at_ms: 5,
        };
        let results: Vec<(OrderEvent, OrderCommandResult)> = ["cmd", "cmd-retry"]
            .into_iter()
            .map(|request| {
                let mut e = command(OrderAction::Pay);
                if let RequestEvent::OrderCommand(c) = &mut e {
                    c.request_id = request.into();
                    c.user_id = "payments-svc".into();
                }
                let t = translate(&e, vec![paid()], None, 0);
                let [event] = &t.events[..] else {
                    panic!("{:?}", t.events)
                };
                let Lookup::Result { json, .. } = &t.lookups[0] else {
                    panic!()
                };
                (
                    event.clone(),
                    serde_json::from_str(json).expect("result JSON"),
                )
            })
            .collect();
        for (request, (event, result)) in ["cmd", "cmd-retry"].iter().zip(&results) {
            let OrderEvent::Paid(c) = event else {
                panic!("{event:?}")
            };
            assert_eq!(
                (
                    c.request_id.as_str(),
                    c.user_id.as_str(),
                    c.payment_ref.as_deref()
                ),
                (*request, "u1", Some("psp-1"))
            );
            assert_eq!(c.decided_at_ms, 5);
            assert_eq!(
                result,
                &OrderCommandResult {
                    request_id: request.to_string(),
                    order_id: "o1".into(),
                    accepted: true,
                    status: Some(OrderStatus::Paid),
                    reason: None,
                }
            );
        }
    }

    #[test]
    fn a_free_prize_is_confirmed() {
        let e = RequestEvent::PurchaseRequested(PurchaseRequested {
            schema_version: 1,
            request_id: "r".into(),
            campaign_id: "c".into(),
            user_id: "u".into(),
            quantity: 1,
            requested_at_ms: Some(1),
            attributes: None,
        });
        let t = translate(
            &e,
            vec![Answer::Purchase {
                status: DecisionStatus::Won,
                reason: None,
                order_id: Some("o".into()),
                quantity: 1,
                decided_at_ms: 2,
                expires_at_ms: 2,
                price: 0,
                prize_id: Some("p1".into()),
                confirmed: true,
            }],
            None,
            0,
        );
        let OrderEvent::Confirmed(c) = &t.events[0] else {
            panic!("{:?}", t.events)
        };
        assert_eq!(c.prize_id.as_deref(), Some("p1"));
        assert_eq!(t.events[0].decision().unwrap().status, DecisionStatus::Won);
    }
}
