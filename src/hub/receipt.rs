//! What a source waits for before it acknowledges readings: a [`Receipt`] for the store
//! ticket that covers them.
//!
//! [`Hub::publish`](super::Hub::publish) fans readings out at once and returns a receipt
//! with the message's [`Published`](super::room::Published) outcome. Every source that acks
//! (a WebSocket device's `accepted`, the MQTT bridge's PUBACK, any later ingest) waits on
//! the same thing: [`Receipt::wait`], or [`Receipt::check`] without waiting. With
//! `history.ack = "memory"` or without a store, a receipt is kept at once. On a cluster
//! hub a bridged message's receipt is Redis's answer instead ([`Receipt::from_redis`]).

use std::sync::Arc;

use crate::sinks::history::durable::{Commits, Ticket};

/// Why readings are not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unavailable(pub(crate) Arc<str>);

/// The durability of one published message's kept readings.
#[derive(Debug, Clone, Default)]
pub(crate) struct Receipt {
    /// The store ticket covering them (0: nothing to wait for).
    ticket: Ticket,
    /// Where commits are announced; `None` when acks do not wait for the disk.
    commits: Option<Commits>,
    /// On a cluster hub: Redis's answer, `None` until it comes.
    redis: Option<Answer>,
}

/// Where a cluster publish's outcome is announced.
pub(crate) type Answer = tokio::sync::watch::Receiver<Option<Result<(), Unavailable>>>;

impl PartialEq for Receipt {
    fn eq(&self, other: &Receipt) -> bool {
        self.ticket == other.ticket
            && self.commits.is_some() == other.commits.is_some()
            && self.redis.is_some() == other.redis.is_some()
    }
}
impl Eq for Receipt {}

impl Receipt {
    /// A receipt that waits for `ticket` to be committed (kept at once if 0).
    pub(crate) fn new(ticket: Ticket, commits: Option<Commits>) -> Receipt {
        Receipt {
            ticket,
            commits: commits.filter(|_| ticket > 0),
            redis: None,
        }
    }

    /// A receipt kept once Redis has taken the readings (a cluster hub's publish).
    pub(crate) fn from_redis(answer: Answer) -> Receipt {
        Receipt {
            redis: Some(answer),
            ..Receipt::default()
        }
    }

    /// Decided now? `Some(Ok)` kept, `Some(Err)` the store is failing, `None` pending.
    pub(crate) fn check(&self) -> Option<Result<(), Unavailable>> {
        if let Some(answer) = &self.redis {
            return answer.borrow().clone();
        }
        let Some(commits) = &self.commits else {
            return Some(Ok(()));
        };
        let state = commits.borrow();
        if state.committed >= self.ticket {
            Some(Ok(()))
        } else {
            state.failing.clone().map(|why| Err(Unavailable(why)))
        }
    }

    /// Waits until the readings are on disk, or the store says it cannot keep them.
    pub(crate) async fn wait(mut self) -> Result<(), Unavailable> {
        if let Some(answer) = self.redis.as_mut() {
            return match answer.wait_for(Option::is_some).await {
                Ok(decided) => decided.clone().unwrap_or(Ok(())),
                Err(_) => Err(Unavailable(Arc::from(
                    "the hub stopped before Redis answered",
                ))),
            };
        }
        loop {
            if let Some(decided) = self.check() {
                return decided;
            }
            let Some(commits) = self.commits.as_mut() else {
                return Ok(());
            };
            if commits.changed().await.is_err() {
                return Err(Unavailable(Arc::from("the history store has stopped")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::history::durable::CommitState;

    #[tokio::test]
    async fn a_receipt_is_kept_once_its_ticket_is_committed_and_refused_while_failing() {
        let (tx, rx) = tokio::sync::watch::channel(CommitState::default());
        assert_eq!(Receipt::new(0, Some(rx.clone())).check(), Some(Ok(())));
        let r = Receipt::new(3, Some(rx.clone()));
        assert_eq!(r.check(), None);
        let waiting = tokio::spawn(r.clone().wait());
        tx.send_modify(|s| s.committed = 2);
        assert_eq!(r.check(), None);
        tx.send_modify(|s| s.committed = 3);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        let later = Receipt::new(4, Some(rx));
        tx.send_modify(|s| s.failing = Some(Arc::from("disk full")));
        assert_eq!(
            later.check(),
            Some(Err(Unavailable(Arc::from("disk full"))))
        );
        drop(tx);
        let (tx, rx) = tokio::sync::watch::channel(CommitState::default());
        let pending = Receipt::new(1, Some(rx));
        drop(tx);
        assert!(
            pending.wait().await.is_err(),
            "a stopped store keeps nothing more"
        );
    }
}
