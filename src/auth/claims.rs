//! What a token grants: its claims as the hub reads them ([`Claims`]), the verified
//! [`Grant`] the rest of the hub asks, and the room patterns (`*` globs) it holds.
//!
//! Part of [`crate::auth`]; no I/O and no crypto here, only the rules: a device token
//! connects only as a device, with the client id `sub`; a dashboard token only as a
//! dashboard, with the client id `sub` or `sub.ANYTHING` (one user, several tabs); an
//! admin token as anything, anywhere.

use serde::{Deserialize, Serialize};
use telehub_protocol::role::Role;

use super::Refusal;

/// `role` in a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TokenRole {
    Device,
    Dashboard,
    Admin,
}

impl TokenRole {
    pub(crate) fn parse(s: &str) -> Option<TokenRole> {
        match s {
            "device" => Some(TokenRole::Device),
            "dashboard" => Some(TokenRole::Dashboard),
            "admin" => Some(TokenRole::Admin),
            _ => None,
        }
    }
}

/// The claims telehub reads (and `telehub token` writes). `iss` and `aud` are checked
/// by the JWT library against `[auth]`, so they only appear here to be written: they
/// are not read back, which also lets `aud` be a JSON array (RFC 7519 4.1.3) as other
/// issuers write it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) sub: String,
    pub(crate) exp: u64,
    pub(crate) role: TokenRole,
    #[serde(default)]
    pub(crate) rooms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) iat: Option<u64>,
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub(crate) iss: Option<String>,
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub(crate) aud: Option<String>,
}

/// A verified token: who, as what, where, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) sub: String,
    pub(crate) role: TokenRole,
    pub(crate) rooms: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub(crate) exp: u64,
}

impl Grant {
    pub(crate) fn is_admin(&self) -> bool {
        self.role == TokenRole::Admin
    }

    /// Whether the token covers `room`.
    pub(crate) fn may_read(&self, room: &str) -> bool {
        self.is_admin() || self.rooms.iter().any(|p| glob_match(p, room))
    }

    /// Whether this token may be in `room` as `client` with `role`.
    pub(crate) fn may_join(&self, room: &str, client: &str, role: Role) -> Result<(), Refusal> {
        if !self.may_read(room) {
            return Err(Refusal::ForbiddenRoom);
        }
        match (self.role, role) {
            (TokenRole::Admin, _) => return Ok(()),
            (TokenRole::Device, Role::Device) | (TokenRole::Dashboard, Role::Dashboard) => {}
            _ => return Err(Refusal::ForbiddenRole),
        }
        let own = client == self.sub
            || (self.role == TokenRole::Dashboard
                && client
                    .strip_prefix(self.sub.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|tab| !tab.is_empty() && !tab.contains('.')));
        if own {
            Ok(())
        } else {
            Err(Refusal::ForbiddenClient)
        }
    }

    /// Whether `fresh` may take over from this grant on a live connection: the same
    /// `sub` and role, and every room this one had.
    pub(crate) fn renewed_by(&self, fresh: &Grant) -> bool {
        fresh.sub == self.sub
            && fresh.role == self.role
            && (fresh.is_admin()
                || self
                    .rooms
                    .iter()
                    .all(|old| fresh.rooms.iter().any(|new| glob_match(new, old))))
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
///
/// Also decides whether one pattern covers another: matching pattern `q` as text, where
/// `p`'s `*` may swallow `q`'s `*`, means every room `q` matches, `p` matches too.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: TokenRole, rooms: &[&str]) -> Grant {
        Grant {
            sub: "t1".into(),
            role,
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            exp: 0,
        }
    }

    #[test]
    fn globs_match_runs_of_anything() {
        for (p, t, want) in [
            ("greenhouse-*", "greenhouse-1", true),
            ("greenhouse-*", "greenhouse-", true),
            ("greenhouse-*", "greenhouse", false),
            ("greenhouse-*", "xgreenhouse-1", false),
            ("*", "", true),
            ("*", "anything", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*-lab", "north-lab", true),
            ("*-lab", "north-lab2", false),
            ("exact", "exact", true),
            ("exact", "exac", false),
            ("", "", true),
            ("", "a", false),
            ("a**", "a", true),
        ] {
            assert_eq!(glob_match(p, t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn joins_follow_role_room_and_client_id() {
        let dev = grant(TokenRole::Device, &["greenhouse-*"]);
        assert_eq!(dev.may_join("greenhouse-1", "t1", Role::Device), Ok(()));
        assert_eq!(
            dev.may_join("kitchen", "t1", Role::Device),
            Err(Refusal::ForbiddenRoom)
        );
        assert_eq!(
            dev.may_join("greenhouse-1", "t2", Role::Device),
            Err(Refusal::ForbiddenClient)
        );
        assert_eq!(
            dev.may_join("greenhouse-1", "t1", Role::Dashboard),
            Err(Refusal::ForbiddenRole)
        );
        assert_eq!(
            dev.may_join("greenhouse-1", "t1.tab", Role::Device),
            Err(Refusal::ForbiddenClient)
        );
        let dash = grant(TokenRole::Dashboard, &["greenhouse-*"]);
        assert_eq!(dash.may_join("greenhouse-1", "t1", Role::Dashboard), Ok(()));
        assert_eq!(
            dash.may_join("greenhouse-1", "t1.tab2", Role::Dashboard),
            Ok(())
        );
        assert_eq!(
            dash.may_join("greenhouse-1", "t1.", Role::Dashboard),
            Err(Refusal::ForbiddenClient)
        );
        assert_eq!(
            dash.may_join("greenhouse-1", "t10", Role::Dashboard),
            Err(Refusal::ForbiddenClient)
        );
        assert_eq!(
            dash.may_join("greenhouse-1", "t1", Role::Device),
            Err(Refusal::ForbiddenRole)
        );
        let admin = grant(TokenRole::Admin, &[]);
        assert_eq!(admin.may_join("anywhere", "anyone", Role::Device), Ok(()));
        assert!(admin.may_read("anywhere"));
    }

    #[test]
    fn a_refresh_keeps_sub_role_and_at_least_the_rooms() {
        let old = grant(TokenRole::Dashboard, &["greenhouse-*", "kitchen"]);
        assert!(old.renewed_by(&grant(TokenRole::Dashboard, &["*"])));
        assert!(old.renewed_by(&grant(
            TokenRole::Dashboard,
            &["kitchen", "greenhouse-*", "x"]
        )));
        assert!(!old.renewed_by(&grant(TokenRole::Dashboard, &["greenhouse-1", "kitchen"])));
        assert!(!old.renewed_by(&grant(TokenRole::Device, &["*"])));
        let mut other = grant(TokenRole::Dashboard, &["*"]);
        other.sub = "t2".into();
        assert!(!old.renewed_by(&other));
    }
}
