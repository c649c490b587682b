//! A room's member table: who is connected, by client id, and the indexes that keep a
//! join or a leave from walking every member. A dashboard's welcome needs the count of
//! dashboards and the list of devices, and its join is told only to the members that
//! asked for everyone's presence; with these kept beside the map, 10,000 dashboards
//! joining one room cost O(devices + watchers) each instead of O(members).

use std::collections::HashMap;
use std::sync::Arc;

use super::{Member, Presence};
use telehub_protocol::outbound::MemberInfo;
use telehub_protocol::role::Role;

/// The members of one room, by client id.
#[derive(Default)]
pub(super) struct Members {
    by_client: HashMap<Arc<str>, Member>,
    /// How many of them are dashboards.
    dashboards: usize,
    /// The devices' client ids (a room has few; dashboards are the many).
    devices: Vec<Arc<str>>,
    /// The client ids of the members that receive every member's presence
    /// ([`Presence::All`]).
    watchers: Vec<Arc<str>>,
}

impl Members {
    pub(super) fn get(&self, client: &str) -> Option<&Member> {
        self.by_client.get(client)
    }

    pub(super) fn get_key_value(&self, client: &str) -> Option<(&Arc<str>, &Member)> {
        self.by_client.get_key_value(client)
    }

    pub(super) fn contains_key(&self, client: &str) -> bool {
        self.by_client.contains_key(client)
    }

    pub(super) fn len(&self) -> usize {
        self.by_client.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Member)> {
        self.by_client.iter()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Member> {
        self.by_client.values()
    }

    /// Adds `member` as `client`, replacing (and returning) a member with that id.
    pub(super) fn insert(&mut self, client: Arc<str>, member: Member) -> Option<Member> {
        let old = self.remove(&client);
        match member.role {
            Role::Dashboard => self.dashboards += 1,
            Role::Device => self.devices.push(client.clone()),
        }
        if member.presence == Presence::All {
            self.watchers.push(client.clone());
        }
        self.by_client.insert(client, member);
        old
    }

    pub(super) fn remove(&mut self, client: &str) -> Option<Member> {
        let old = self.by_client.remove(client)?;
        match old.role {
            Role::Dashboard => self.dashboards -= 1,
            Role::Device => forget(&mut self.devices, client),
        }
        if old.presence == Presence::All {
            forget(&mut self.watchers, client);
        }
        Some(old)
    }

    /// What a joining `client`'s welcome lists: how many other dashboards there are, and
    /// the other members it is shown (devices, and with `all` the dashboards too).
    pub(super) fn roster(&self, client: &str, all: bool) -> (usize, Vec<MemberInfo<'_>>) {
        let itself = self.by_client.get(client);
        let dashboards =
            self.dashboards - usize::from(itself.is_some_and(|m| m.role == Role::Dashboard));
        let shown = if all {
            self.by_client
                .iter()
                .filter(|(c, _)| &***c != client)
                .map(info)
                .collect()
        } else {
            self.devices
                .iter()
                .filter(|c| &***c != client)
                .filter_map(|c| self.by_client.get_key_value(c))
                .map(info)
                .collect()
        };
        (dashboards, shown)
    }

    /// The members other than `subject` to tell of its join or leave: everyone for a
    /// device, the watchers for a dashboard.
    pub(super) fn told_of<'a>(
        &'a self,
        subject: &'a str,
        role: Role,
    ) -> impl Iterator<Item = &'a Member> + 'a {
        let everyone = (role == Role::Device).then(|| {
            self.by_client
                .iter()
                .filter(move |(c, _)| &***c != subject)
                .map(|(_, m)| m)
        });
        let watchers = (role != Role::Device).then(|| {
            self.watchers
                .iter()
                .filter(move |c| &***c != subject)
                .filter_map(|c| self.by_client.get(c))
        });
        everyone
            .into_iter()
            .flatten()
            .chain(watchers.into_iter().flatten())
    }
}

fn info<'a>((c, m): (&'a Arc<str>, &'a Member)) -> MemberInfo<'a> {
    MemberInfo {
        client: c,
        role: m.role,
        via: m.via,
    }
}

fn forget(ids: &mut Vec<Arc<str>>, client: &str) {
    if let Some(i) = ids.iter().position(|c| &**c == client) {
        ids.swap_remove(i);
    }
}
