//! The shutdown latch: one signal that reaches every long-lived task.
//!
//! `app::run` owns a [`ShutdownTrigger`]; every connection and background task holds a
//! [`Shutdown`] and `select!`s on [`Shutdown::recv`] in its loop. Tasks also hold a clone
//! of the completion sender so that `run` can wait for them all to finish (the
//! mini-redis pattern: the receiver sees `None` once every sender is dropped).

use tokio::sync::{mpsc, watch};

/// Listens for the shutdown signal.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Fires the shutdown signal.
#[derive(Debug)]
pub(crate) struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// Held by each task; `run` waits until all are dropped.
pub(crate) type Completion = mpsc::Sender<()>;

pub(crate) fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub(crate) fn fire(&self) {
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    /// Waits for the signal (returns at once if it already fired, or if the trigger is
    /// gone, which also means the server is stopping).
    pub(crate) async fn recv(&mut self) {
        let _ = self.rx.wait_for(|fired| *fired).await;
    }
}
