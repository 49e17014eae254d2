//! Who may do what through the client API: the roles a client token
//! carries and the one function that decides whether a role allows an
//! action on a task.
//!
//! Authentication (which token, which subject) happens at the edge, in the
//! runtime; this module only answers "may this principal do that", as a
//! pure function, so the rules are read and tested in one place.
//!
//! | action                    | `submit`        | `read` | `admin` |
//! |---------------------------|-----------------|--------|---------|
//! | submit a task             | yes             | no     | yes     |
//! | get / watch a task        | its own tasks   | any    | any     |
//! | cancel a task             | its own tasks   | no     | any     |
//! | list agents               | yes             | yes    | yes     |
//! | list tasks                | its own tasks   | any    | any     |
//! | publish an event          | yes             | no     | yes     |
//! | list dead letters         | no              | yes    | yes     |
//!
//! A task's owner is the subject of the token that submitted it. A task
//! submitted while authentication was off has no owner: only `read` and
//! `admin` reach it.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::ClientId;

/// What a client token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientRole {
    /// Submits tasks and follows or cancels its own; lists agents.
    Submit,
    /// Reads every task and lists agents; changes nothing.
    Read,
    /// Everything.
    Admin,
}

impl ClientRole {
    pub const ALL: [ClientRole; 3] = [ClientRole::Submit, ClientRole::Read, ClientRole::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Submit => "submit",
            ClientRole::Read => "read",
            ClientRole::Admin => "admin",
        }
    }
}

impl fmt::Display for ClientRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of [`ClientRole::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown role '{0}' (submit, read or admin)")]
pub struct UnknownRole(pub String);

impl FromStr for ClientRole {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClientRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.chars().take(32).collect()))
    }
}

/// An authenticated client: the subject its token names and the role the
/// token grants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub subject: ClientId,
    pub role: ClientRole,
}

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Submit,
    /// Get or Watch a task owned by `owner` (`None`: submitted without
    /// authentication).
    Read {
        owner: Option<&'a ClientId>,
    },
    Cancel {
        owner: Option<&'a ClientId>,
    },
    ListAgents,
    /// List tasks of `owner` (`None`: of every owner).
    ListTasks {
        owner: Option<&'a ClientId>,
    },
    /// Publish an event (docs/events.md).
    PublishEvent,
    /// List the deliveries that ran out of attempts, with their payloads.
    ListDeadLetters,
}

impl Action<'_> {
    fn verb(&self) -> &'static str {
        match self {
            Action::Submit => "submit tasks",
            Action::Read { .. } => "read this task",
            Action::Cancel { .. } => "cancel this task",
            Action::ListAgents => "list agents",
            Action::ListTasks { .. } => "list these tasks",
            Action::PublishEvent => "publish events",
            Action::ListDeadLetters => "list dead letters",
        }
    }
}

/// Why [`authorize`] refused: names the subject, its role and the action,
/// never a token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("'{subject}' (role {role}) may not {verb}{why}")]
pub struct Denied {
    pub subject: ClientId,
    pub role: ClientRole,
    pub verb: &'static str,
    why: &'static str,
}

/// Whether `principal` may do `action`. The table in the module
/// documentation, as code.
pub fn authorize(principal: &Principal, action: Action<'_>) -> Result<(), Denied> {
    let own = |owner: Option<&ClientId>| owner == Some(&principal.subject);
    let (allowed, why) = match (principal.role, action) {
        (ClientRole::Admin, _) => (true, ""),
        (_, Action::ListAgents) => (true, ""),
        (ClientRole::Submit, Action::Submit) => (true, ""),
        (ClientRole::Read, Action::Submit) => (false, ": a read token submits nothing"),
        (ClientRole::Read, Action::Read { .. }) => (true, ""),
        (ClientRole::Read, Action::Cancel { .. }) => (false, ": a read token changes nothing"),
        (ClientRole::Read, Action::ListTasks { .. }) => (true, ""),
        (ClientRole::Submit, Action::Read { owner } | Action::Cancel { owner }) => (
            own(owner),
            ": it was submitted by another client (a submit token reaches only its own tasks)",
        ),
        (ClientRole::Submit, Action::ListTasks { owner }) => {
            (own(owner), ": a submit token lists only its own tasks")
        }
        (ClientRole::Submit, Action::PublishEvent) => (true, ""),
        (ClientRole::Read, Action::PublishEvent) => (false, ": a read token publishes nothing"),
        (ClientRole::Read, Action::ListDeadLetters) => (true, ""),
        (ClientRole::Submit, Action::ListDeadLetters) => (
            false,
            ": dead letters carry every publisher's payloads (a read or admin token lists them)",
        ),
    };
    if allowed {
        Ok(())
    } else {
        Err(Denied {
            subject: principal.subject.clone(),
            role: principal.role,
            verb: action.verb(),
            why,
        })
    }
}

/// The owner a task listing is restricted to: `asked` (the caller's owner
/// filter), except that a `submit` token lists only its own tasks, so no
/// filter means its own, and another owner is refused. Without a principal
/// (authentication off) `asked` stands.
pub fn list_owner(
    principal: Option<&Principal>,
    asked: Option<ClientId>,
) -> Result<Option<ClientId>, Denied> {
    let Some(principal) = principal else {
        return Ok(asked);
    };
    let owner = match (principal.role, asked) {
        (ClientRole::Submit, None) => Some(principal.subject.clone()),
        (_, asked) => asked,
    };
    authorize(
        principal,
        Action::ListTasks {
            owner: owner.as_ref(),
        },
    )?;
    Ok(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(subject: &str, role: ClientRole) -> Principal {
        Principal {
            subject: ClientId::parse(subject).unwrap(),
            role,
        }
    }

    #[test]
    fn a_submit_token_lists_only_its_own_tasks() {
        let alice = principal("alice", ClientRole::Submit);
        let bob = ClientId::parse("bob").unwrap();
        assert_eq!(
            list_owner(Some(&alice), None),
            Ok(Some(alice.subject.clone()))
        );
        assert_eq!(
            list_owner(Some(&alice), Some(alice.subject.clone())),
            Ok(Some(alice.subject.clone()))
        );
        let denied = list_owner(Some(&alice), Some(bob.clone())).unwrap_err();
        assert!(
            denied.to_string().contains("lists only its own"),
            "{denied}"
        );
        for role in [ClientRole::Read, ClientRole::Admin] {
            let p = principal("ops", role);
            assert_eq!(list_owner(Some(&p), None), Ok(None));
            assert_eq!(
                list_owner(Some(&p), Some(bob.clone())),
                Ok(Some(bob.clone()))
            );
        }
        assert_eq!(list_owner(None, Some(bob.clone())), Ok(Some(bob)));
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        for role in ClientRole::ALL {
            assert_eq!(role.as_str().parse::<ClientRole>(), Ok(role));
        }
        let unknown = "root".parse::<ClientRole>().unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "unknown role 'root' (submit, read or admin)"
        );
        assert!("Admin".parse::<ClientRole>().is_err());
    }

    #[test]
    fn a_submit_token_reaches_only_its_own_tasks() {
        let alice = principal("alice", ClientRole::Submit);
        let bob = ClientId::parse("bob").unwrap();
        let own = Some(&alice.subject);
        assert!(authorize(&alice, Action::Submit).is_ok());
        assert!(authorize(&alice, Action::ListAgents).is_ok());
        assert!(authorize(&alice, Action::Read { owner: own }).is_ok());
        assert!(authorize(&alice, Action::Cancel { owner: own }).is_ok());
        for action in [
            Action::Read { owner: Some(&bob) },
            Action::Cancel { owner: Some(&bob) },
            Action::Read { owner: None },
            Action::Cancel { owner: None },
        ] {
            let denied = authorize(&alice, action).unwrap_err();
            assert!(
                denied
                    .to_string()
                    .starts_with("'alice' (role submit) may not"),
                "{denied}"
            );
        }
    }

    #[test]
    fn a_read_token_reads_everything_and_changes_nothing() {
        let auditor = principal("auditor", ClientRole::Read);
        let bob = ClientId::parse("bob").unwrap();
        assert!(authorize(&auditor, Action::Read { owner: Some(&bob) }).is_ok());
        assert!(authorize(&auditor, Action::Read { owner: None }).is_ok());
        assert!(authorize(&auditor, Action::ListAgents).is_ok());
        let submit = authorize(&auditor, Action::Submit).unwrap_err();
        assert_eq!(
            submit.to_string(),
            "'auditor' (role read) may not submit tasks: a read token submits nothing"
        );
        assert!(authorize(&auditor, Action::Cancel { owner: Some(&bob) }).is_err());
    }

    #[test]
    fn an_admin_token_does_everything() {
        let root = principal("ops", ClientRole::Admin);
        let bob = ClientId::parse("bob").unwrap();
        for action in [
            Action::Submit,
            Action::ListAgents,
            Action::Read { owner: Some(&bob) },
            Action::Cancel { owner: Some(&bob) },
            Action::Cancel { owner: None },
        ] {
            assert!(authorize(&root, action).is_ok(), "{action:?}");
        }
    }
}
