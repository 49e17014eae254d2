//! Errors of the client API and their gRPC status codes, mapped in one
//! place from a deliberately small set.

use agentmesh_core::TaskId;
use agentmesh_core::task::TaskFileError;
use agentmesh_registry::RegistryError;
use thiserror::Error;
use tonic::Status;

use crate::coordinator::SubmitError;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error(transparent)]
    TaskFile(#[from] TaskFileError),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no task '{0}'")]
    NotFound(TaskId),
    #[error("this node runs no coordinator; send tasks to a coordinator node")]
    NoCoordinator,
    #[error("coordinator did not answer: {0}")]
    Coordinator(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::TaskFile(e) if e.is_precondition() => Status::failed_precondition(message),
            ApiError::TaskFile(_) | ApiError::InvalidArgument(_) => {
                Status::invalid_argument(message)
            }
            ApiError::Submit(SubmitError::NotPersisted(_)) => Status::unavailable(message),
            ApiError::Submit(_) => Status::resource_exhausted(message),
            ApiError::NotFound(_) => Status::not_found(message),
            ApiError::NoCoordinator => Status::failed_precondition(message),
            ApiError::Coordinator(_) => Status::unavailable(message),
            ApiError::Registry(RegistryError::Corrupt { .. }) => Status::internal(message),
            ApiError::Registry(_) => Status::unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn codes_follow_the_kind_of_failure() {
        let cycle = ApiError::TaskFile(TaskFileError::Cycle(vec!["a".into(), "a".into()]));
        assert_eq!(Status::from(cycle).code(), Code::InvalidArgument);
        let capability = ApiError::TaskFile(TaskFileError::CapabilityUnavailable {
            field: "tasks[0].capability".into(),
            capability: "x".into(),
            available: "none".into(),
        });
        assert_eq!(Status::from(capability).code(), Code::FailedPrecondition);
        let full = ApiError::Submit(SubmitError::QueueFull {
            queued: 1,
            limit: 1,
        });
        assert_eq!(Status::from(full).code(), Code::ResourceExhausted);
        let status = Status::from(ApiError::NotFound(TaskId::new("t9")));
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "no task 't9'")
        );
    }
}
