//! Errors of the client API and of the mailbox, and their gRPC status
//! codes: the one place where an error becomes a `tonic::Status`.

use std::time::Duration;

use agentmesh_core::task::TaskFileError;
use agentmesh_core::{AgentId, TaskId};
use agentmesh_registry::RegistryError;
use thiserror::Error;
use tonic::Status;

use super::auth::AuthError;
use crate::actors::coordinator::SubmitError;
use crate::actors::coordinator::events::PublishError;
use crate::transport::DeliverError;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error(transparent)]
    TaskFile(#[from] TaskFileError),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("{0}")]
    InvalidArgument(String),
    /// Ended tasks are deleted after their retention, so an id that was
    /// valid once may be gone; nothing is kept to tell the two apart.
    #[error(
        "no task '{0}': never submitted, or ended and deleted after its retention \
         (--task-retention, --max-ended-tasks)"
    )]
    NotFound(TaskId),
    #[error("this node runs no coordinator; send tasks to a coordinator node")]
    NoCoordinator,
    #[error("coordinator did not answer: {0}")]
    Coordinator(String),
    #[error("no coordinator leader was elected within {0:?}; retry")]
    NoLeader(Duration),
    /// Only the leader changes tasks, and this request may not be
    /// forwarded (again).
    #[error("this coordinator is not the leader; '{0}' leads: send the request there or retry")]
    NotLeader(AgentId),
    #[error(
        "this node serves at most {0} Watch streams at once (--max-watch-streams); \
         retry later or watch on another coordinator"
    )]
    TooManyWatches(usize),
    /// A submit reused an idempotency key with another document.
    #[error(
        "idempotency key '{key}' was used for task {task} with a different task file; \
         use a new key for a new task, or the same file to get that task back"
    )]
    IdempotencyConflict { key: String, task: TaskId },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// gRPC metadata key of the pause a refused client should take before
/// submitting again, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// The pause suggested when the coordinator's queues are full: long enough
/// for a batch of work to drain, short enough not to idle a cluster.
const QUEUE_FULL_RETRY_MS: u64 = 500;

/// gRPC metadata key saying that the node answered but its store (etcd)
/// failed, so a client can tell "the node is down" from "the node is up,
/// its etcd is not" (see [`store_failure`]). Values: [`STORE_UNREACHABLE`],
/// [`STORE_FULL`].
pub const STORE_FAILURE: &str = "agentmesh-store-failure";
/// [`STORE_FAILURE`]: etcd cannot be reached from the node.
pub const STORE_UNREACHABLE: &str = "unreachable";
/// [`STORE_FAILURE`]: etcd refuses writes for lack of space.
pub const STORE_FULL: &str = "full";

/// What failed behind the node that sent `status`, if it was its store:
/// [`STORE_UNREACHABLE`] or [`STORE_FULL`].
pub fn store_failure(status: &Status) -> Option<&str> {
    status.metadata().get(STORE_FAILURE)?.to_str().ok()
}

impl ApiError {
    /// The [`STORE_FAILURE`] this error is, if any.
    fn store_failure(&self) -> Option<&'static str> {
        match self {
            ApiError::Submit(SubmitError::StoreFull(_))
            | ApiError::Registry(RegistryError::NoSpace(_)) => Some(STORE_FULL),
            ApiError::Submit(SubmitError::StoreUnreachable | SubmitError::NotPersisted(_))
            | ApiError::Registry(RegistryError::Unavailable(_)) => Some(STORE_UNREACHABLE),
            _ => None,
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let failure = error.store_failure();
        let mut status = status_of(error);
        if let Some(failure) = failure {
            status.metadata_mut().insert(
                STORE_FAILURE,
                tonic::metadata::AsciiMetadataValue::from_static(failure),
            );
        }
        status
    }
}

/// The code of `error`, from a deliberately small set.
fn status_of(error: ApiError) -> Status {
    let message = error.to_string();
    match error {
        ApiError::Submit(SubmitError::QueueFull { .. } | SubmitError::TooManyTasks { .. }) => {
            retry_later(message)
        }
        ApiError::Submit(SubmitError::Client(refusal)) if refusal.is_retryable() => {
            retry_later(message)
        }
        ApiError::Submit(SubmitError::Client(_)) => Status::failed_precondition(message),
        ApiError::TaskFile(e) if e.is_precondition() => Status::failed_precondition(message),
        ApiError::TaskFile(_) | ApiError::InvalidArgument(_) => Status::invalid_argument(message),
        // etcd's NOSPACE: nothing can be accepted until an operator
        // frees space; no retry-after, retrying soon will not help.
        ApiError::Submit(SubmitError::StoreFull(_))
        | ApiError::Registry(RegistryError::NoSpace(_)) => Status::resource_exhausted(message),
        ApiError::Submit(
            SubmitError::NotPersisted(_) | SubmitError::NotLeader | SubmitError::StoreUnreachable,
        )
        | ApiError::NoLeader(_)
        | ApiError::NotLeader(_) => Status::unavailable(message),
        ApiError::Submit(SubmitError::TooWide { .. }) => Status::failed_precondition(message),
        ApiError::Submit(SubmitError::RecordTooLarge { .. }) => Status::invalid_argument(message),
        ApiError::NotFound(_) => Status::not_found(message),
        ApiError::IdempotencyConflict { .. } | ApiError::Submit(SubmitError::Duplicate { .. }) => {
            Status::already_exists(message)
        }
        ApiError::TooManyWatches(_) => Status::resource_exhausted(message),
        ApiError::NoCoordinator => Status::failed_precondition(message),
        ApiError::Coordinator(_) => Status::unavailable(message),
        ApiError::Registry(RegistryError::Corrupt { .. }) => Status::internal(message),
        ApiError::Registry(RegistryError::DuplicateAgent { .. }) => Status::already_exists(message),
        ApiError::Registry(_) => Status::unavailable(message),
        ApiError::Publish(PublishError::Invalid(_)) => Status::invalid_argument(message),
        ApiError::Publish(PublishError::Refused(_) | PublishError::Busy) => retry_later(message),
        ApiError::Publish(PublishError::NotLeader | PublishError::NotPersisted(_)) => {
            Status::unavailable(message)
        }
        ApiError::Auth(AuthError::Denied(_)) => Status::permission_denied(message),
        ApiError::Auth(_) => Status::unauthenticated(message),
    }
}

/// `RESOURCE_EXHAUSTED` with the [`RETRY_AFTER_MS`] hint.
fn retry_later(message: String) -> Status {
    let mut status = Status::resource_exhausted(message);
    status.metadata_mut().insert(
        RETRY_AFTER_MS,
        tonic::metadata::MetadataValue::from(QUEUE_FULL_RETRY_MS),
    );
    status
}

impl From<DeliverError> for Status {
    fn from(error: DeliverError) -> Self {
        let message = error.to_string();
        match error {
            DeliverError::UnknownAgent(_) => Status::not_found(message),
            DeliverError::UnknownKind { .. } | DeliverError::BadPayload { .. } => {
                Status::invalid_argument(message)
            }
            DeliverError::TooLarge { .. } | DeliverError::Busy { .. } => {
                Status::resource_exhausted(message)
            }
            DeliverError::Stopped(_) | DeliverError::Unreachable { .. } => {
                Status::unavailable(message)
            }
            DeliverError::ForgedSender { .. }
            | DeliverError::NotAllowed { .. }
            | DeliverError::NotOwner { .. } => Status::permission_denied(message),
            // Not a forgery: a leader this node has not heard of yet, or
            // one that lost its leadership. The sender tells the two apart
            // by this code (`DeliverError::sender_not_leader`).
            DeliverError::NotLeader { .. } => Status::failed_precondition(message),
            DeliverError::Refused { code, .. } => Status::new(code, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn a_full_queue_says_when_to_come_back() {
        let full = ApiError::Submit(SubmitError::QueueFull {
            queued: 9,
            ready: 2,
            limit: 10,
        });
        let status = Status::from(full);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get(RETRY_AFTER_MS)
                .unwrap()
                .to_str()
                .unwrap(),
            "500"
        );
    }

    #[test]
    fn codes_follow_the_kind_of_failure() {
        let cycle = ApiError::TaskFile(TaskFileError::Cycle(vec!["a".into(), "a".into()]));
        assert_eq!(Status::from(cycle).code(), Code::InvalidArgument);
        let capability = ApiError::TaskFile(TaskFileError::CapabilityUnavailable {
            field: "tasks[0].capability".into(),
            capability: "x".into(),
            runner: "worker",
            available: "none".into(),
        });
        assert_eq!(Status::from(capability).code(), Code::FailedPrecondition);
        let full = ApiError::Submit(SubmitError::QueueFull {
            queued: 1,
            ready: 1,
            limit: 1,
        });
        assert_eq!(Status::from(full).code(), Code::ResourceExhausted);
        let client = agentmesh_core::ClientId::parse("a").unwrap();
        let over = Status::from(ApiError::Submit(SubmitError::Client(
            agentmesh_core::fairness::ClientRefusal::ActiveTasks {
                client,
                active: 2,
                limit: 2,
            },
        )));
        assert_eq!(over.code(), Code::ResourceExhausted);
        assert!(over.message().contains("--max-active-tasks-per-client"));
        assert!(over.metadata().get(RETRY_AFTER_MS).is_some());
        let too_wide = ApiError::Submit(SubmitError::Client(
            agentmesh_core::fairness::ClientRefusal::TooWide { ready: 3, limit: 2 },
        ));
        assert_eq!(Status::from(too_wide).code(), Code::FailedPrecondition);
        let wide = ApiError::Submit(SubmitError::TooWide { ready: 3, limit: 2 });
        assert_eq!(Status::from(wide).code(), Code::FailedPrecondition);
        let status = Status::from(ApiError::NotFound(TaskId::new("t9")));
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().starts_with(
                "no task 't9': never submitted, or ended and deleted after its retention"
            ),
            "{}",
            status.message()
        );
    }

    #[test]
    fn refused_tokens_are_unauthenticated_and_refused_roles_permission_denied() {
        for refused in [AuthError::Missing, AuthError::Malformed, AuthError::Unknown] {
            assert_eq!(
                Status::from(ApiError::Auth(refused)).code(),
                Code::Unauthenticated
            );
        }
        let reader = agentmesh_core::access::Principal {
            subject: agentmesh_core::ClientId::parse("audit").unwrap(),
            role: agentmesh_core::access::ClientRole::Read,
        };
        let denied =
            agentmesh_core::access::authorize(&reader, agentmesh_core::access::Action::Submit)
                .unwrap_err();
        let status = Status::from(ApiError::Auth(AuthError::Denied(denied)));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().contains("'audit' (role read)"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn etcd_out_of_space_is_resource_exhausted_and_unreachable_unavailable() {
        let full = Status::from(ApiError::Submit(SubmitError::StoreFull(
            "etcd is out of space".into(),
        )));
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(full.message().contains("etcd is out of space"));
        let nospace = Status::from(ApiError::Registry(RegistryError::NoSpace(
            "put of 1 task records failed".into(),
        )));
        assert_eq!(nospace.code(), Code::ResourceExhausted);
        assert!(
            nospace.message().contains("NOSPACE"),
            "{}",
            nospace.message()
        );
        let unreachable = Status::from(ApiError::Submit(SubmitError::StoreUnreachable));
        assert_eq!(unreachable.code(), Code::Unavailable);
        assert!(unreachable.message().contains("etcd cannot be reached"));
    }

    #[test]
    fn store_failures_are_marked_so_clients_can_blame_etcd() {
        let unreachable = Status::from(ApiError::Registry(RegistryError::Unavailable(
            "lease grant failed".into(),
        )));
        assert_eq!(store_failure(&unreachable), Some(STORE_UNREACHABLE));
        let refused = Status::from(ApiError::Submit(SubmitError::StoreUnreachable));
        assert_eq!(store_failure(&refused), Some(STORE_UNREACHABLE));
        let full = Status::from(ApiError::Submit(SubmitError::StoreFull("x".into())));
        assert_eq!(store_failure(&full), Some(STORE_FULL));
        // A node's own refusals blame no store.
        assert_eq!(store_failure(&Status::from(ApiError::NoCoordinator)), None);
        assert_eq!(
            store_failure(&Status::from(ApiError::NotFound(TaskId::new("t")))),
            None
        );
    }
}
