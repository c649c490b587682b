//! Pending commands: which dashboard (and which of its connections) sent a command that
//! still waits for the device's ack, so the ack goes back to exactly that dashboard.
//!
//! Part of the hub stage, one table per [`Room`](crate::hub::room::Room), under its lock.
//! The table is bounded by `limits.max_pending_commands`: past it, commands older than
//! `limits.command_timeout_ms` are forgotten, and if that frees nothing the new command is
//! refused with `too_many_pending`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use telehub_protocol::codes::ErrorCode;
use telehub_protocol::inbound::ProtoError;

/// A command waiting for its ack: who asked, and whom.
pub(crate) struct Pending {
    pub(crate) dashboard: Arc<str>,
    /// The asking connection: a dashboard that reconnected does not get an old ack.
    pub(crate) dashboard_conn: u64,
    /// With `[cluster]`: the hub the dashboard is on, when it is another one (its
    /// connection numbers are that hub's, so they never match a local connection).
    pub(crate) node: Option<Arc<str>>,
    pub(crate) device: Arc<str>,
    pub(crate) since: Instant,
}

/// The commands of one room that wait for an ack, by command id.
#[derive(Default)]
pub(crate) struct PendingCommands(HashMap<String, Pending>);

impl PendingCommands {
    /// Checks that command `id` may be sent: not already pending, and room in the table
    /// (commands older than `timeout` make room).
    pub(crate) fn admit(
        &mut self,
        id: &str,
        max_pending: usize,
        timeout: Duration,
    ) -> Result<(), ProtoError> {
        if self.0.contains_key(id) {
            return Err(ProtoError::new(
                ErrorCode::DuplicateId,
                format!("command `{id}` is already pending in this room"),
            )
            .with_id(id));
        }
        if self.0.len() >= max_pending {
            self.expire(timeout);
            if self.0.len() >= max_pending {
                return Err(ProtoError::new(
                    ErrorCode::TooManyPending,
                    format!("{max_pending} commands already wait for an ack in this room"),
                )
                .with_id(id));
            }
        }
        Ok(())
    }

    /// Remembers a command sent to its device.
    pub(crate) fn insert(&mut self, id: String, pending: Pending) {
        self.0.insert(id, pending);
    }

    /// Takes the pending command `id` that `device` answers; `unknown_command` if there
    /// is none for that device.
    pub(crate) fn take(&mut self, id: &str, device: &str) -> Result<Pending, ProtoError> {
        if self.0.get(id).is_some_and(|p| &*p.device == device) {
            if let Some(p) = self.0.remove(id) {
                return Ok(p);
            }
        }
        Err(ProtoError::new(
            ErrorCode::UnknownCommand,
            format!("no pending command `{id}` for this device"),
        )
        .with_id(id))
    }

    /// Forgets the commands a dashboard connection sent (it left: no one takes the ack).
    pub(crate) fn forget_connection(&mut self, conn: u64) {
        self.0
            .retain(|_, p| p.node.is_some() || p.dashboard_conn != conn);
    }

    /// Forgets commands older than `timeout`.
    pub(crate) fn expire(&mut self, timeout: Duration) {
        self.0.retain(|_, p| p.since.elapsed() < timeout);
    }
}
