//! A WebSocket device's messages waiting for their durable `accepted`, in arrival order.
//!
//! Part of the device's session ([`super::ws_client`]): after `Hub::publish`, a message
//! whose [`Receipt`] is not decided yet waits here, and the session's loop, woken by the
//! store's commit announcements ([`announced`]), turns each decided receipt into its
//! answer: `accepted` listing the seqs once they are on disk, `store_unavailable` if the
//! store fails. Answers keep the order of the messages.

use std::collections::VecDeque;

use crate::hub::receipt::Receipt;
use crate::sinks::history::durable::Commits;
use telehub_protocol::seqs::SeqRanges;

/// Messages waiting at most. About a second of messages at the default rate limit, while
/// a commit takes one flush interval; past it (a store that stalls without failing yet)
/// a message is answered `store_unavailable` at once rather than remembered, so the list
/// stays bounded and nothing is acknowledged that is not kept.
pub(crate) const MAX_PENDING_ACKS: usize = 1_024;

/// What to tell the device about one message's seqs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `accepted` with these seqs.
    Accepted(SeqRanges),
    /// `store_unavailable` with this message and these seqs.
    Unavailable(String, SeqRanges),
}

fn not_stored(why: &str, seqs: SeqRanges) -> Answer {
    Answer::Unavailable(
        format!("reading(s) fanned out but not stored ({why}); resend them later"),
        seqs,
    )
}

/// The waiting messages of one connection.
#[derive(Default)]
pub(crate) struct PendingAcks(VecDeque<(Receipt, SeqRanges)>);

impl PendingAcks {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A new message's kept `seqs` and their receipt: its answer now, or `None` if it
    /// waits (behind an undecided message, every later one waits too).
    pub(crate) fn admit(&mut self, receipt: Receipt, seqs: SeqRanges) -> Option<Answer> {
        let decided = if self.0.is_empty() {
            receipt.check()
        } else {
            None
        };
        match decided {
            Some(Ok(())) => Some(Answer::Accepted(seqs)),
            Some(Err(why)) => Some(not_stored(&why.0, seqs)),
            None if self.0.len() >= MAX_PENDING_ACKS => Some(Answer::Unavailable(
                format!("more than {MAX_PENDING_ACKS} messages wait for the history store; resend them later"),
                seqs,
            )),
            None => {
                self.0.push_back((receipt, seqs));
                None
            }
        }
    }

    /// The answers now decided, in order; with `stopped` (the store is gone) every
    /// message still waiting is `store_unavailable`.
    pub(crate) fn resolve(&mut self, stopped: bool) -> Vec<Answer> {
        let mut out = Vec::new();
        while let Some((receipt, _)) = self.0.front() {
            let decided = receipt.check();
            if decided.is_none() && !stopped {
                break;
            }
            let Some((_, seqs)) = self.0.pop_front() else {
                break;
            };
            out.push(match decided {
                Some(Ok(())) => Answer::Accepted(seqs),
                Some(Err(why)) => not_stored(&why.0, seqs),
                None => not_stored("the history store has stopped", seqs),
            });
        }
        out
    }
}

/// Waits for the store's next commit announcement; true once the store has stopped (no
/// announcement can come any more).
pub(crate) async fn announced(commits: &mut Option<Commits>) -> bool {
    match commits {
        Some(c) => c.changed().await.is_err(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::history::durable::CommitState;

    fn seqs(a: u64, b: u64) -> SeqRanges {
        SeqRanges(vec![[a, b]])
    }

    #[test]
    fn answers_keep_message_order_and_the_list_is_bounded() {
        let (tx, rx) = tokio::sync::watch::channel(CommitState::default());
        let mut p = PendingAcks::default();
        assert_eq!(
            p.admit(Receipt::new(0, Some(rx.clone())), seqs(1, 1)),
            Some(Answer::Accepted(seqs(1, 1)))
        );
        assert_eq!(p.admit(Receipt::new(5, Some(rx.clone())), seqs(2, 3)), None);
        // Decided already, but behind an undecided message: it waits its turn.
        assert_eq!(p.admit(Receipt::new(0, Some(rx.clone())), seqs(4, 4)), None);
        assert!(p.resolve(false).is_empty());
        tx.send_modify(|s| s.committed = 5);
        assert_eq!(
            p.resolve(false),
            [Answer::Accepted(seqs(2, 3)), Answer::Accepted(seqs(4, 4))]
        );
        for i in 0..MAX_PENDING_ACKS as u64 {
            assert_eq!(
                p.admit(Receipt::new(9, Some(rx.clone())), seqs(10 + i, 10 + i)),
                None
            );
        }
        assert!(matches!(
            p.admit(Receipt::new(9, Some(rx.clone())), seqs(1, 1)),
            Some(Answer::Unavailable(_, _))
        ));
        assert!(p
            .resolve(true)
            .iter()
            .all(|a| matches!(a, Answer::Unavailable(_, _))));
        assert!(p.is_empty());
    }
}
