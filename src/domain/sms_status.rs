//! The delivery status of one SMS: a monotonic state machine (SPEC §4 "Delivery status").
//!
//! `queued < sending < sent < {delivered, undelivered, failed}`; terminal states (those three, plus our own
//! `simulated`, `skipped` and `canceled`) are sticky. A transition is applied only when it moves forward, so
//! callbacks arriving in any order converge on the same state, and a late `sent` never overwrites `delivered`.
//! Also the aggregate status of an alert from the statuses of its messages.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Queued,
    Sending,
    Sent,
    Delivered,
    Undelivered,
    Failed,
    /// Handled by the simulated provider (no credentials): nothing was sent.
    Simulated,
    /// Never queued (no consent, opted out, duplicate).
    Skipped,
    /// Queued, then withdrawn before the provider call (consent re-check).
    Canceled,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 9] = [
        MessageStatus::Queued,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Undelivered,
        MessageStatus::Failed,
        MessageStatus::Simulated,
        MessageStatus::Skipped,
        MessageStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Undelivered => "undelivered",
            MessageStatus::Failed => "failed",
            MessageStatus::Simulated => "simulated",
            MessageStatus::Skipped => "skipped",
            MessageStatus::Canceled => "canceled",
        }
    }

    /// Our stored names.
    pub fn parse(s: &str) -> Option<MessageStatus> {
        MessageStatus::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// A Twilio `MessageStatus` callback value, mapped onto our states. `None` for values that say nothing
    /// about an outbound message's progress (`receiving`, `received`, unknown future values).
    pub fn from_twilio(s: &str) -> Option<MessageStatus> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "accepted" | "scheduled" | "queued" => MessageStatus::Queued,
            "sending" => MessageStatus::Sending,
            "sent" => MessageStatus::Sent,
            "delivered" | "read" => MessageStatus::Delivered,
            "undelivered" => MessageStatus::Undelivered,
            "failed" => MessageStatus::Failed,
            "canceled" => MessageStatus::Canceled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        self.rank() == 3
    }

    fn rank(self) -> u8 {
        match self {
            MessageStatus::Queued => 0,
            MessageStatus::Sending => 1,
            MessageStatus::Sent => 2,
            _ => 3,
        }
    }
}

/// The state after `incoming` is reported for a message in `current`: `Some(next)` when it moves forward,
/// `None` when it is stale or the message is already final.
pub fn transition(current: MessageStatus, incoming: MessageStatus) -> Option<MessageStatus> {
    (!current.is_terminal() && incoming.rank() > current.rank()).then_some(incoming)
}

/// Aggregate status of an alert from its messages' statuses.
pub fn aggregate(statuses: &[MessageStatus]) -> &'static str {
    use MessageStatus::*;
    let active: Vec<MessageStatus> = statuses.iter().copied().filter(|s| *s != Skipped).collect();
    let all = |f: &dyn Fn(MessageStatus) -> bool| active.iter().all(|s| f(*s));
    let any = |f: &dyn Fn(MessageStatus) -> bool| active.iter().any(|s| f(*s));
    if active.is_empty() {
        "skipped"
    } else if all(&|s| s == Queued) {
        "queued"
    } else if any(&|s| matches!(s, Queued | Sending)) {
        "sending"
    } else if any(&|s| s == Sent) {
        "sent"
    } else if all(&|s| s == Simulated) {
        "simulated"
    } else if all(&|s| s == Delivered) {
        "delivered"
    } else if any(&|s| s == Delivered) {
        "partially_delivered"
    } else if all(&|s| s == Canceled) {
        "canceled"
    } else {
        "failed"
    }
}

#[cfg(test)]
mod tests {
    use super::MessageStatus::*;
    use super::*;

    fn fold(start: MessageStatus, events: &[MessageStatus]) -> MessageStatus {
        events.iter().fold(start, |s, e| transition(s, *e).unwrap_or(s))
    }

    #[test]
    fn every_pair_of_reports_converges_whatever_their_order_unless_both_are_final() {
        for a in MessageStatus::ALL {
            for b in MessageStatus::ALL {
                for start in [Queued, Sending, Sent] {
                    let ab = fold(start, &[a, b]);
                    let ba = fold(start, &[b, a]);
                    if a.is_terminal() && b.is_terminal() && a != b {
                        // Twilio reports one final state; two different ones: the first one wins (sticky).
                        assert_eq!(ab, a, "{start:?} {a:?} {b:?}");
                        assert_eq!(ba, b, "{start:?} {b:?} {a:?}");
                    } else {
                        assert_eq!(ab, ba, "{start:?}: {a:?},{b:?} vs {b:?},{a:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_ordering_of_a_normal_delivery_ends_delivered() {
        let path = [Queued, Sending, Sent, Delivered];
        // All 24 permutations.
        let mut perms: Vec<Vec<usize>> = vec![vec![]];
        for _ in 0..path.len() {
            let mut next = Vec::new();
            for p in &perms {
                for i in (0..path.len()).filter(|i| !p.contains(i)) {
                    let mut q = p.clone();
                    q.push(i);
                    next.push(q);
                }
            }
            perms = next;
        }
        assert_eq!(perms.len(), 24);
        for p in perms {
            let events: Vec<MessageStatus> = p.iter().map(|i| path[*i]).collect();
            assert_eq!(fold(Queued, &events), Delivered, "{events:?}");
        }
    }

    #[test]
    fn final_states_are_sticky() {
        for current in MessageStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for incoming in MessageStatus::ALL {
                assert_eq!(transition(current, incoming), None, "{current:?} <- {incoming:?}");
            }
        }
    }

    #[test]
    fn a_late_sent_never_overwrites_delivered_and_nothing_moves_backwards() {
        assert_eq!(transition(Delivered, Sent), None);
        assert_eq!(transition(Sent, Sending), None);
        assert_eq!(transition(Sent, Queued), None);
        assert_eq!(transition(Sending, Sending), None);
        assert_eq!(transition(Sending, Sent), Some(Sent));
        assert_eq!(transition(Queued, Failed), Some(Failed));
        assert_eq!(transition(Sent, Undelivered), Some(Undelivered));
    }

    #[test]
    fn twilio_values_map_onto_our_states() {
        let cases = [
            ("accepted", Some(Queued)),
            ("scheduled", Some(Queued)),
            ("queued", Some(Queued)),
            ("sending", Some(Sending)),
            ("sent", Some(Sent)),
            ("delivered", Some(Delivered)),
            ("read", Some(Delivered)),
            ("undelivered", Some(Undelivered)),
            ("failed", Some(Failed)),
            ("canceled", Some(Canceled)),
            ("DELIVERED", Some(Delivered)),
            ("received", None),
            ("receiving", None),
            ("", None),
            ("bogus", None),
        ];
        for (s, want) in cases {
            assert_eq!(MessageStatus::from_twilio(s), want, "{s}");
        }
        for s in MessageStatus::ALL {
            assert_eq!(MessageStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn the_alert_aggregate_follows_its_messages() {
        let cases: &[(&[MessageStatus], &str)] = &[
            (&[], "skipped"),
            (&[Skipped, Skipped], "skipped"),
            (&[Queued, Queued, Skipped], "queued"),
            (&[Queued, Delivered], "sending"),
            (&[Sending, Sent], "sending"),
            (&[Sent, Delivered], "sent"),
            (&[Simulated, Simulated, Skipped], "simulated"),
            (&[Delivered, Delivered], "delivered"),
            (&[Delivered, Failed], "partially_delivered"),
            (&[Failed, Undelivered], "failed"),
            (&[Canceled], "canceled"),
            (&[Canceled, Failed], "failed"),
        ];
        for (statuses, want) in cases {
            assert_eq!(aggregate(statuses), *want, "{statuses:?}");
        }
    }

    #[test]
    fn an_alert_with_a_message_in_flight_is_sending_whatever_its_other_messages_are() {
        // The dispatcher relies on this to skip reading the other messages when it records a send.
        for a in MessageStatus::ALL {
            for b in MessageStatus::ALL {
                for order in [[Sending, a, b], [a, Sending, b], [a, b, Sending]] {
                    assert_eq!(aggregate(&order), "sending", "{order:?}");
                }
            }
        }
    }
}
