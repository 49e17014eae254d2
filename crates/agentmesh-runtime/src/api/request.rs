//! Natural-language requests at submit: a file with `request:` (any
//! pattern but `reactive`) is decomposed here, in [`super::task::TaskApi`]
//! before the record is handed to the coordinator, so a slow model never
//! holds the coordinator's actor: the configured chat provider is asked
//! for a decomposition under the schema of `core::request`, validated by
//! [`chat_validated`] (retried once with the error fed back), and the
//! deterministic built-in decomposer answers when there is no model or its
//! answer is invalid twice. Either way the DAG then passes the same
//! task-file validator as a submitted file.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_core::request::{
    self, Decomposition, RequestError, RequestOptions, RequestPlan, builtin,
};
use agentmesh_core::task::{TaskFile, TaskFileError, TaskLimits, validate};
use agentmesh_core::{Membership, Role};
use agentmesh_llm::{ChatProvider, ChatRequest, DomainCheck, Message, chat_validated};

/// The name a built-in decomposition is recorded under.
pub const BUILTIN: &str = "builtin";
/// Time a model has for one decomposition, retry included.
pub const DECOMPOSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Tokens a decomposition answer may take: room for the most subtasks a
/// small plan has, bounded so a rambling model stops.
pub const DECOMPOSE_MAX_TOKENS: u32 = 1024;

/// Decomposes requests with the node's knobs; one per node, shared by
/// every submit.
#[derive(Debug, Clone, Default)]
pub struct RequestPlanner {
    pub options: RequestOptions,
}

fn refused(error: RequestError) -> TaskFileError {
    match error {
        RequestError::NothingPlaced { .. } => TaskFileError::Unsupported {
            field: "request".into(),
            message: error
                .to_string()
                .trim_start_matches("request: ")
                .to_owned(),
        },
        RequestError::Invalid(message) => TaskFileError::Invalid {
            field: "request".into(),
            message,
        },
        RequestError::Decomposition(message) => TaskFileError::Invalid {
            field: "request".into(),
            message,
        },
    }
}

impl RequestPlanner {
    /// The validated task file a request stands for, and the plan the
    /// record keeps.
    /// `chat` is the node's model (`None`: the built-in rules decompose).
    pub async fn plan(
        &self,
        chat: Option<&Arc<dyn ChatProvider>>,
        file: TaskFile,
        limits: &TaskLimits,
        membership: &Membership,
    ) -> Result<(TaskFile, RequestPlan), TaskFileError> {
        let request = request::check_request_file(&file).map_err(refused)?.to_owned();
        let capabilities = membership.capabilities_of(Role::Worker);
        let offers = |c: &str| membership.offers_as(Role::Worker, c);
        let check = |decomposition: &Decomposition| {
            if decomposition.tasks.len() > self.options.max_subtasks {
                return Err(TaskFileError::Invalid {
                    field: "tasks".into(),
                    message: format!(
                        "the decomposition has {} tasks, over the limit --request-max-subtasks = {}",
                        decomposition.tasks.len(),
                        self.options.max_subtasks
                    ),
                });
            }
            validate(decomposition.task_file(&file), limits, &offers, &|| {
                capabilities.clone()
            })
        };
        let mut fallback = None;
        if let Some(chat) = chat {
            match self.ask(chat.as_ref(), &file, &request, &capabilities, limits, membership).await {
                Ok((decomposition, provider, retried)) => {
                    let decomposition = decomposition.bounded();
                    let tasks = check(&decomposition)?;
                    let mut plan = RequestPlan::new(&file, decomposition, provider, &self.options);
                    plan.retried_because = retried;
                    return Ok((tasks, plan));
                }
                Err(reason) => {
                    tracing::warn!(provider = chat.name(), %reason, "decomposition falls back to the built-in rules");
                    fallback = Some(agentmesh_core::task::message::clip(&reason, 600));
                }
            }
        }
        let made = builtin::decompose(
            &request,
            file.strategy,
            &offers,
            &capabilities,
            self.options.max_subtasks,
        )
        .map_err(refused)?;
        let tasks = check(&made.decomposition)?;
        let mut plan = RequestPlan::new(&file, made.decomposition, BUILTIN, &self.options);
        plan.skipped = made.skipped;
        plan.fallback = fallback;
        Ok((tasks, plan))
    }

    /// The model's decomposition, validated (schema, then the task-file
    /// validator as the domain check), or why there is none.
    async fn ask(
        &self,
        chat: &dyn ChatProvider,
        file: &TaskFile,
        request: &str,
        capabilities: &[String],
        limits: &TaskLimits,
        membership: &Membership,
    ) -> Result<(Decomposition, String, Option<String>), String> {
        if capabilities.is_empty() {
            return Err("no live worker offers a capability".into());
        }
        let schema = request::decomposition_schema(capabilities, self.options.max_subtasks);
        let prompt = request::decomposition_prompt(request, file.strategy, capabilities);
        let ask = ChatRequest::new(vec![
            Message::system(
                "You plan work for a cluster of tool-running agents. Answer with JSON only.",
            ),
            Message::user(prompt),
        ])
        .with_schema("decomposition", schema)
        .with_temperature(0.0)
        .with_seed(0)
        .with_max_tokens(DECOMPOSE_MAX_TOKENS)
        .with_timeout(DECOMPOSE_TIMEOUT);
        let (file, limits, membership) = (file.clone(), limits.clone(), membership.clone());
        let max = self.options.max_subtasks;
        let domain: DomainCheck = Arc::new(move |value| {
            let decomposition: Decomposition =
                serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
            if decomposition.tasks.len() > max {
                return Err(format!("{} tasks, over the limit of {max}", decomposition.tasks.len()));
            }
            validate(
                decomposition.task_file(&file),
                &limits,
                &|c| membership.offers_as(Role::Worker, c),
                &|| membership.capabilities_of(Role::Worker),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        });
        // The provider bounds its own call; this bounds the retry too.
        let answer = tokio::time::timeout(
            DECOMPOSE_TIMEOUT * 2,
            chat_validated(chat, &ask, Some(&domain)),
        )
        .await
        .map_err(|_| format!("{}: no decomposition within {:?}", chat.name(), DECOMPOSE_TIMEOUT * 2))?
        .map_err(|e| format!("{}: {e}", chat.name()))?;
        let decomposition: Decomposition =
            serde_json::from_value(answer.value).map_err(|e| e.to_string())?;
        Ok((
            decomposition,
            answer.answer.provider,
            answer.retried_because.map(|e| e.to_string()),
        ))
    }
}
