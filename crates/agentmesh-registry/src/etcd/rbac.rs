//! The etcd roles and users of an agentmesh cluster, and [`setup`], which
//! creates them and turns etcd's authentication on (`agentmesh
//! etcd-setup`).
//!
//! etcd grants `read` or `readwrite` on one key or on a key range, to
//! roles; a user holds roles. Each node gets a user of its own, named by
//! its agent id, holding:
//!
//! | role | key or range (under `/agentmesh/v1/`) | grant | what for |
//! |---|---|---|---|
//! | `agentmesh-node` (every node) | `agents/` prefix | read | the membership view |
//! | | `election/coordinator/` prefix | read | who leads |
//! | `agentmesh-agent-<id>` (its own) | `agents/<id>`, that key alone | readwrite | its registration (and revoking its lease, which etcd allows only with write on every key on it) |
//! | `agentmesh-coordinator` | `election/coordinator/` prefix | readwrite | its candidate key, named by a lease id not known in advance |
//! | | `tasks/` prefix | readwrite | task records: fenced writes, retention's deletes, reads |
//! | | `task-index/` prefix | readwrite | the listing index beside the records (written and deleted with them) |
//! | | `idempotency/` prefix | readwrite | submits' idempotency keys (written and deleted with the records) |
//! | | `reputation/` prefix | read | placement by reputation |
//! | | `request-memory/` prefix | readwrite | the coordination memory: the leader's triples, read at submit |
//! | `agentmesh-peer` | `reputation/` prefix | readwrite | compare-and-swap updates after a consensus round |
//!
//! Workers and hierarchy levels hold only the first two. `checkpoints/`
//! is reserved and granted to no one. What this cannot express (the
//! election and task prefixes are shared by every coordinator, the
//! reputation prefix by every peer, and nothing ties a key to a lease) is
//! set out in `docs/security.md`.

use std::collections::BTreeSet;

use agentmesh_core::{AgentId, Role};
use etcd_client::{Client, Permission};
use tracing::info;

use super::EtcdOptions;
use super::access::{self, Password};
use crate::{RegistryError, keys};

/// The role every node's user holds.
pub const NODE_ROLE: &str = "agentmesh-node";
/// The role of coordinators' users.
pub const COORDINATOR_ROLE: &str = "agentmesh-coordinator";
/// The role of peers' users.
pub const PEER_ROLE: &str = "agentmesh-peer";
/// Names every role this module manages start with; other roles of a
/// user are left alone.
const ROLE_PREFIX: &str = "agentmesh-";
/// etcd's administrator: the user and the role it must hold before
/// authentication can be turned on.
const ROOT: &str = "root";

/// One permission of one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: String,
    pub key: String,
    /// The whole range under `key`, not the key alone.
    pub prefix: bool,
    /// `readwrite` rather than `read`.
    pub write: bool,
}

impl Grant {
    fn new(role: &str, key: impl Into<String>, prefix: bool, write: bool) -> Self {
        Self {
            role: role.to_owned(),
            key: key.into(),
            prefix,
            write,
        }
    }

    fn permission(&self) -> Permission {
        let permission = if self.write {
            Permission::read_write(self.key.as_bytes())
        } else {
            Permission::read(self.key.as_bytes())
        };
        if self.prefix {
            permission.with_prefix()
        } else {
            permission
        }
    }
}

/// The permissions of the roles nodes share.
pub fn shared_grants() -> Vec<Grant> {
    vec![
        Grant::new(NODE_ROLE, keys::AGENTS, true, false),
        Grant::new(
            NODE_ROLE,
            keys::ELECTION_COORDINATOR_CANDIDATES,
            true,
            false,
        ),
        Grant::new(
            COORDINATOR_ROLE,
            keys::ELECTION_COORDINATOR_CANDIDATES,
            true,
            true,
        ),
        Grant::new(COORDINATOR_ROLE, keys::TASKS, true, true),
        Grant::new(COORDINATOR_ROLE, keys::TASK_INDEX, true, true),
        Grant::new(COORDINATOR_ROLE, keys::IDEMPOTENCY, true, true),
        Grant::new(COORDINATOR_ROLE, keys::REPUTATION, true, false),
        Grant::new(PEER_ROLE, keys::REPUTATION, true, true),
        // Events and dead letters carry publishers' payloads: coordinators
        // only (docs/events.md).
        Grant::new(COORDINATOR_ROLE, keys::EVENTS, true, true),
        Grant::new(COORDINATOR_ROLE, keys::DEAD_LETTERS, true, true),
        Grant::new(COORDINATOR_ROLE, keys::REQUEST_MEMORY, true, true),
    ]
}

/// The role holding agent `id`'s own registration key.
pub fn agent_role(id: &AgentId) -> String {
    format!("{ROLE_PREFIX}agent-{id}")
}

/// The one permission of [`agent_role`]: its registration key, and no
/// other agent's.
pub fn agent_grant(id: &AgentId) -> Grant {
    Grant::new(&agent_role(id), keys::agent(id), false, true)
}

/// The roles the user of a node of `role` hosting agent `id` holds.
pub fn roles_for(role: Role, id: &AgentId) -> Vec<String> {
    let mut roles = vec![NODE_ROLE.to_owned(), agent_role(id)];
    match role {
        Role::Coordinator => roles.push(COORDINATOR_ROLE.to_owned()),
        Role::Peer => roles.push(PEER_ROLE.to_owned()),
        Role::Worker | Role::Level | Role::Reactive => {}
    }
    roles
}

/// One node's etcd user: named by its agent id (`--id`), with a role
/// fitting what the node runs.
#[derive(Debug, Clone)]
pub struct NodeUser {
    pub id: AgentId,
    pub role: Role,
    pub password: Password,
}

/// What [`setup`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetupReport {
    /// Whether this call turned authentication on (it was off).
    pub enabled_auth: bool,
    /// The users created or updated, in order.
    pub users: Vec<String>,
}

/// Creates (or brings up to date) the roles above and one user per
/// `users` entry, then turns etcd's authentication on. Safe to run again,
/// for instance to add a node: existing roles get their grants again,
/// existing users their password and roles (roles named `agentmesh-*`
/// that no longer fit are revoked).
///
/// While authentication is off anyone may do this, and `root` is created
/// with `root_password`; once it is on, only `root` with that password
/// may. `options` gives the endpoints and TLS; its credentials are not
/// used.
pub async fn setup(
    options: &EtcdOptions,
    root_password: &Password,
    users: &[NodeUser],
) -> Result<SetupReport, RegistryError> {
    if root_password.is_empty() {
        return Err(RegistryError::Refused(
            "the root password is empty".to_owned(),
        ));
    }
    let mut root_options = options.clone();
    root_options.credentials = Some(access::EtcdCredentials::new(ROOT, root_password.clone()));
    let redact = |e: RegistryError| redacted(e, root_password, users);
    // Logging in as root is the reachability check, retried while etcd
    // does not answer yet (`EtcdOptions::connect_patience`).
    let root_login =
        super::startup::patiently(&root_options, || super::connect_client(&root_options));
    let (mut client, auth_was_on) = match root_login.await {
        Ok(client) => (client, true),
        Err(RegistryError::Refused(message)) if message.contains("not enabled") => {
            let mut open = options.clone();
            open.credentials = None;
            (super::connect_client(&open).await.map_err(redact)?, false)
        }
        Err(e) => return Err(redact(e)),
    };
    let mut report = SetupReport::default();
    if !auth_was_on {
        ensure_role(&mut client, ROOT).await.map_err(redact)?;
        ensure_user(&mut client, ROOT, root_password)
            .await
            .map_err(redact)?;
        call(
            "grant role root to user root",
            client.user_grant_role(ROOT, ROOT),
        )
        .await
        .map_err(redact)?;
    }
    let mut grants = shared_grants();
    grants.extend(users.iter().map(|u| agent_grant(&u.id)));
    let mut roles_made = BTreeSet::new();
    for grant in &grants {
        if roles_made.insert(grant.role.clone()) {
            ensure_role(&mut client, &grant.role)
                .await
                .map_err(redact)?;
        }
        call(
            &format!(
                "grant {} on {} to role {}",
                access_word(grant),
                grant.key,
                grant.role
            ),
            client.role_grant_permission(grant.role.clone(), grant.permission()),
        )
        .await
        .map_err(redact)?;
    }
    for user in users {
        let name = user.id.as_str();
        ensure_user(&mut client, name, &user.password)
            .await
            .map_err(redact)?;
        let wanted = roles_for(user.role, &user.id);
        let held = call(&format!("read user {name}"), client.user_get(name))
            .await
            .map_err(redact)?;
        for stale in held
            .roles()
            .iter()
            .filter(|r| r.starts_with(ROLE_PREFIX) && !wanted.contains(r))
        {
            call(
                &format!("revoke role {stale} from user {name}"),
                client.user_revoke_role(name, stale.clone()),
            )
            .await
            .map_err(redact)?;
        }
        for role in &wanted {
            call(
                &format!("grant role {role} to user {name}"),
                client.user_grant_role(name, role.clone()),
            )
            .await
            .map_err(redact)?;
        }
        info!(user = name, role = ?user.role, "etcd user ready");
        report.users.push(name.to_owned());
    }
    if !auth_was_on {
        call("enable authentication", client.auth_enable())
            .await
            .map_err(redact)?;
        report.enabled_auth = true;
        info!("etcd authentication enabled");
    }
    Ok(report)
}

fn access_word(grant: &Grant) -> &'static str {
    match (grant.write, grant.prefix) {
        (true, true) => "readwrite (prefix)",
        (true, false) => "readwrite",
        (false, true) => "read (prefix)",
        (false, false) => "read",
    }
}

/// Every password scrubbed from an error's text.
fn redacted(error: RegistryError, root: &Password, users: &[NodeUser]) -> RegistryError {
    let scrub = |text: String| {
        users
            .iter()
            .fold(root.redact(&text), |text, u| u.password.redact(&text))
    };
    match error {
        RegistryError::Unavailable(m) => RegistryError::Unavailable(scrub(m)),
        RegistryError::Refused(m) => RegistryError::Refused(scrub(m)),
        other => other,
    }
}

/// One request; etcd's refusals of its content (a name taken, no
/// permission) are [`RegistryError::Refused`].
async fn call<T>(
    what: &str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, RegistryError> {
    request.await.map_err(|e| {
        let message = format!("etcd-setup: {what} failed: {}", access::describe(&e));
        if access::is_refusal(&e) {
            RegistryError::Refused(message)
        } else {
            RegistryError::Unavailable(message)
        }
    })
}

fn already_exists(error: &RegistryError) -> bool {
    matches!(error, RegistryError::Refused(m) if m.contains("already exists"))
}

async fn ensure_role(client: &mut Client, role: &str) -> Result<(), RegistryError> {
    match call(&format!("add role {role}"), client.role_add(role)).await {
        Err(e) if already_exists(&e) => Ok(()),
        other => other.map(drop),
    }
}

/// Adds `name`, or sets its password when it exists.
async fn ensure_user(
    client: &mut Client,
    name: &str,
    password: &Password,
) -> Result<(), RegistryError> {
    match call(
        &format!("add user {name}"),
        client.user_add(name, password.expose(), None),
    )
    .await
    {
        Err(e) if already_exists(&e) => call(
            &format!("set the password of user {name}"),
            client.user_change_password(name, password.expose()),
        )
        .await
        .map(drop),
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_may_write_its_own_key_and_nothing_else() {
        let id = AgentId::new("worker-1");
        let roles = roles_for(Role::Worker, &id);
        let grants: Vec<Grant> = shared_grants()
            .into_iter()
            .chain([agent_grant(&id)])
            .filter(|g| roles.contains(&g.role))
            .collect();
        let writable: Vec<(&str, bool)> = grants
            .iter()
            .filter(|g| g.write)
            .map(|g| (g.key.as_str(), g.prefix))
            .collect();
        assert_eq!(writable, vec![("/agentmesh/v1/agents/worker-1", false)]);
        assert!(
            grants.iter().all(|g| !g.key.starts_with(keys::TASKS)),
            "a worker must not read task records: {grants:?}"
        );
    }

    #[test]
    fn only_coordinators_touch_task_records_and_only_peers_write_reputation() {
        for grant in shared_grants() {
            if [
                keys::TASKS,
                keys::TASK_INDEX,
                keys::IDEMPOTENCY,
                keys::EVENTS,
                keys::DEAD_LETTERS,
            ]
            .iter()
            .any(|prefix| grant.key.starts_with(prefix))
            {
                assert_eq!(grant.role, COORDINATOR_ROLE);
            }
            if grant.key.starts_with(keys::REPUTATION) && grant.write {
                assert_eq!(grant.role, PEER_ROLE);
            }
            assert!(!grant.key.starts_with(keys::CHECKPOINTS));
        }
        let coordinator = roles_for(Role::Coordinator, &AgentId::new("c"));
        assert!(coordinator.contains(&COORDINATOR_ROLE.to_owned()));
        assert!(!coordinator.contains(&PEER_ROLE.to_owned()));
    }
}
