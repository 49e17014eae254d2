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

use agentmesh_core::request::memory::best_match;
use agentmesh_core::request::{
    self, Decomposition, PlannedTask, Refinement, RequestError, RequestOptions, RequestPlan,
    Reused, Review, builtin, post, refine,
};
use agentmesh_core::task::message::clip;
use agentmesh_core::task::{TaskFile, TaskFileError, TaskLimits, validate};
use agentmesh_core::{Membership, Role};
use agentmesh_llm::{
    ChatProvider, ChatRequest, DomainCheck, EmbeddingProvider, Message, chat_validated,
};
use agentmesh_registry::RequestMemoryStore;

/// The name a built-in decomposition is recorded under.
pub const BUILTIN: &str = "builtin";
/// Time a model has for one decomposition, retry included.
pub const DECOMPOSE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a submit of a natural-language request may take on a node
/// with a model: the memory's embedding, then a decomposition and its
/// retry, with room for the durable write. Clients wait at least this long.
pub const PLANNING_SUBMIT_TIMEOUT: Duration =
    Duration::from_secs(EMBED_TIMEOUT.as_secs() + 2 * DECOMPOSE_TIMEOUT.as_secs() + 10);
/// Time a model has for a summary.
pub const SUMMARY_TIMEOUT: Duration = Duration::from_secs(60);
/// Tokens a summary may take: a few sentences.
pub const SUMMARY_MAX_TOKENS: u32 = 256;
/// Time the embedding of a request may take at submit before the memory
/// is searched lexically.
pub const EMBED_TIMEOUT: Duration = Duration::from_secs(10);

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
            message: error.to_string().trim_start_matches("request: ").to_owned(),
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
    /// `chat` is the node's model (`None`: the built-in rules decompose);
    /// `memory` the coordination memory, searched first (by `embed`'s
    /// embeddings when there is one, lexically otherwise).
    pub async fn plan(
        &self,
        chat: Option<&Arc<dyn ChatProvider>>,
        embed: Option<&Arc<dyn EmbeddingProvider>>,
        memory: Option<&dyn RequestMemoryStore>,
        file: TaskFile,
        limits: &TaskLimits,
        membership: &Membership,
    ) -> Result<(TaskFile, RequestPlan), TaskFileError> {
        let request = request::check_request_file(&file)
            .map_err(refused)?
            .to_owned();
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
        if let Some(memory) = memory
            && self.options.memory_size > 0
            && let Some((decomposition, provider, reused)) =
                self.recall(embed, memory, &request).await
        {
            match check(&decomposition) {
                Ok(tasks) => {
                    let mut plan = RequestPlan::new(&file, decomposition, provider, &self.options);
                    plan.reused = Some(reused);
                    return Ok((tasks, plan));
                }
                // The cluster changed since (a capability gone, a limit
                // lowered): decompose afresh.
                Err(error) => tracing::info!(
                    from_task = %reused.from_task,
                    %error,
                    "a remembered decomposition no longer validates; decomposing afresh"
                ),
            }
        }
        let mut fallback = None;
        if let Some(chat) = chat {
            match self
                .ask(
                    chat.as_ref(),
                    &file,
                    &request,
                    &capabilities,
                    limits,
                    membership,
                )
                .await
            {
                Ok((decomposition, provider, retried)) => {
                    let tasks = check(&decomposition)?;
                    let mut plan = RequestPlan::new(&file, decomposition, provider, &self.options);
                    plan.retried_because = retried;
                    return Ok((tasks, plan));
                }
                Err(reason) => {
                    tracing::warn!(provider = chat.name(), %reason, "decomposition falls back to the built-in rules");
                    fallback = Some(clip(&reason, 600));
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

    /// The remembered decomposition most similar to `request`, at or above
    /// `--request-memory-similarity`, with its provider and where it came
    /// from. A memory that cannot be read is no reason to refuse a submit.
    async fn recall(
        &self,
        embed: Option<&Arc<dyn EmbeddingProvider>>,
        memory: &dyn RequestMemoryStore,
        request: &str,
    ) -> Option<(Decomposition, String, Reused)> {
        let entries = memory
            .request_memory()
            .await
            .inspect_err(|error| tracing::warn!(%error, "the coordination memory is unreadable"))
            .ok()?;
        if entries.is_empty() {
            return None;
        }
        let mut embedding = None;
        if let Some(embed) = embed {
            match tokio::time::timeout(EMBED_TIMEOUT, embed.embed(&[request.to_owned()])).await {
                Ok(Ok(mut answer)) if answer.vectors.len() == 1 => embedding = answer.vectors.pop(),
                Ok(Ok(_)) => tracing::warn!("the embedding provider answered no vector"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the memory is searched lexically: no embedding")
                }
                Err(_) => tracing::warn!("the memory is searched lexically: embedding timed out"),
            }
        }
        let recall = best_match(
            request,
            embedding.as_deref(),
            &entries,
            self.options.memory_similarity,
        )?;
        Some((
            recall.entry.decomposition.clone(),
            recall.entry.provider.clone(),
            Reused {
                from_task: recall.entry.task.clone(),
                similarity: recall.similarity,
                by: recall.by.to_owned(),
            },
        ))
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
        let (file, limits, membership) = (file.clone(), limits.clone(), membership.clone());
        let max = self.options.max_subtasks;
        let domain: DomainCheck = Arc::new(move |value| {
            let decomposition = bounded_answer(value, max)?;
            validate(
                decomposition.task_file(&file),
                &limits,
                &|c| membership.offers_as(Role::Worker, c),
                &|| membership.capabilities_of(Role::Worker),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        });
        let (value, provider, retried) = self
            .ask_validated(chat, "decomposition", schema, prompt, domain)
            .await?;
        Ok((bounded_answer(&value, max)?, provider, retried))
    }

    /// One planning call: `prompt` under `schema`, validated by `domain`,
    /// retried once with the error, the whole bounded in time.
    async fn ask_validated(
        &self,
        chat: &dyn ChatProvider,
        name: &str,
        schema: serde_json::Value,
        prompt: String,
        domain: DomainCheck,
    ) -> Result<(serde_json::Value, String, Option<String>), String> {
        let ask = ChatRequest::new(vec![
            Message::system(
                "You plan work for a cluster of tool-running agents. Answer with JSON only.",
            ),
            Message::user(prompt),
        ])
        .with_schema(name, schema)
        .with_temperature(0.0)
        .with_seed(0)
        .with_max_tokens(request::decomposition_max_tokens(self.options.max_subtasks))
        .with_timeout(DECOMPOSE_TIMEOUT);
        // The provider bounds its own call; this bounds the retry too.
        let answer = tokio::time::timeout(
            DECOMPOSE_TIMEOUT * 2,
            chat_validated(chat, &ask, Some(&domain)),
        )
        .await
        .map_err(|_| {
            format!(
                "{}: no {name} within {:?}",
                chat.name(),
                DECOMPOSE_TIMEOUT * 2
            )
        })?
        .map_err(|e| format!("{}: {e}", chat.name()))?;
        Ok((
            answer.value,
            answer.answer.provider,
            answer.retried_because.map(|e| e.to_string()),
        ))
    }

    /// Refinement round `review.round`: the model's tasks, placed in the
    /// round's namespace and validated with every task that ran (retried
    /// once with the error); the built-in round (the weak tasks again)
    /// without a model, or when its answer is invalid twice.
    pub async fn refine(
        &self,
        chat: Option<&Arc<dyn ChatProvider>>,
        review: &Review,
        limits: &TaskLimits,
        membership: &Membership,
    ) -> Refinement {
        let mut round = Refinement {
            round: review.round,
            provider: BUILTIN.into(),
            fallback: None,
            retried_because: None,
            tasks: Vec::new(),
        };
        if let Some(chat) = chat {
            match self
                .ask_round(chat.as_ref(), review, limits, membership)
                .await
            {
                Ok((tasks, provider, retried)) => {
                    round.tasks = tasks;
                    round.provider = provider;
                    round.retried_because = retried;
                    return round;
                }
                Err(reason) => {
                    tracing::warn!(provider = chat.name(), %reason, "the refinement round falls back to the built-in rule");
                    round.fallback = Some(clip(&reason, 600));
                }
            }
        }
        round.tasks = refine::builtin(review);
        round
    }

    async fn ask_round(
        &self,
        chat: &dyn ChatProvider,
        review: &Review,
        limits: &TaskLimits,
        membership: &Membership,
    ) -> Result<(Vec<PlannedTask>, String, Option<String>), String> {
        let capabilities = membership.capabilities_of(Role::Worker);
        if capabilities.is_empty() {
            return Err("no live worker offers a capability".into());
        }
        let max = self.options.max_subtasks;
        let schema = refine::refinement_schema(&capabilities, max, review);
        let prompt = refine::refinement_prompt(review, &capabilities);
        let (checked, limits, membership) = (review.clone(), limits.clone(), membership.clone());
        let placed = move |value: &serde_json::Value| {
            let tasks = refine::place(bounded_answer(value, max)?, &checked)?;
            validate(
                refine::refined_file(&checked, &tasks),
                &limits,
                &|c| membership.offers_as(Role::Worker, c),
                &|| membership.capabilities_of(Role::Worker),
            )
            .map_err(|e| refine::round_error(&e.to_string(), &checked))?;
            Ok::<_, String>(tasks)
        };
        let domain: DomainCheck = {
            let placed = placed.clone();
            Arc::new(move |value| placed(value).map(|_| ()))
        };
        let (value, provider, retried) = self
            .ask_validated(chat, "refinement", schema, prompt, domain)
            .await?;
        Ok((placed(&value)?, provider, retried))
    }

    /// The summary of a request's results: the model's, or the extractive
    /// one without a model or when the model gives none; with who wrote
    /// it and why a model's was not used.
    pub async fn summarize(
        &self,
        chat: Option<&Arc<dyn ChatProvider>>,
        request: &str,
        outputs: &[(String, String, serde_json::Value)],
    ) -> (String, String, Option<String>) {
        let Some(chat) = chat else {
            return (post::extractive_summary(outputs), BUILTIN.into(), None);
        };
        let ask = ChatRequest::new(vec![
            Message::system("You answer from the results agents found, briefly and factually."),
            Message::user(refine::summary_prompt(request, outputs)),
        ])
        .with_temperature(0.0)
        .with_seed(0)
        .with_max_tokens(SUMMARY_MAX_TOKENS)
        .with_timeout(SUMMARY_TIMEOUT);
        let reason = match tokio::time::timeout(SUMMARY_TIMEOUT, chat.chat(&ask)).await {
            Ok(Ok(answer)) if !answer.text.trim().is_empty() => {
                return (answer.text, answer.provider, None);
            }
            Ok(Ok(_)) => format!("{}: an empty summary", chat.name()),
            Ok(Err(error)) => format!("{}: {error}", chat.name()),
            Err(_) => format!("{}: no summary within {SUMMARY_TIMEOUT:?}", chat.name()),
        };
        tracing::warn!(%reason, "the summary falls back to the extractive one");
        (
            post::extractive_summary(outputs),
            BUILTIN.into(),
            Some(clip(&reason, 600)),
        )
    }
}

/// A model's plan as data, refused when it has more than `max` tasks.
fn bounded_answer(value: &serde_json::Value, max: usize) -> Result<Decomposition, String> {
    let decomposition: Decomposition =
        serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    if decomposition.tasks.len() > max {
        return Err(format!(
            "{} tasks, over the limit of {max}",
            decomposition.tasks.len()
        ));
    }
    Ok(decomposition.bounded())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use agentmesh_core::task::validate::parse;
    use agentmesh_core::{AgentId, AgentRegistration};
    use agentmesh_llm::{ChatAnswer, FinishReason, LlmError, Usage};
    use async_trait::async_trait;
    use serde_json::json;

    use super::*;

    /// A provider that answers the scripted texts in order.
    struct Scripted {
        answers: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl ChatProvider for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        async fn chat(&self, _: &ChatRequest) -> Result<ChatAnswer, LlmError> {
            let text = self.answers.lock().unwrap().remove(0);
            Ok(ChatAnswer {
                text,
                finish_reason: FinishReason::Stop,
                usage: Usage::default(),
                provider: "scripted".into(),
            })
        }
    }

    fn provider(answers: &[&str]) -> Arc<dyn ChatProvider> {
        Arc::new(Scripted {
            answers: Mutex::new(answers.iter().map(|s| (*s).to_owned()).collect()),
        })
    }

    fn membership() -> Membership {
        let worker = AgentRegistration {
            id: AgentId::new("w"),
            role: Role::Worker,
            level: None,
            capabilities: vec!["math.eval".into(), "text.word_count".into()],
            endpoint: "127.0.0.1:1".into(),
            load: 0,
            max_concurrency: 1,
            version: "t".into(),
            faults: Vec::new(),
            insecure: false,
            event_handlers: Vec::new(),
        };
        Membership {
            agents: [(worker.id.clone(), worker)].into(),
        }
    }

    async fn plan(chat: Option<Arc<dyn ChatProvider>>) -> (TaskFile, RequestPlan) {
        let file = parse(
            "name: r\nrequest: calculate 6 * 7\n",
            &TaskLimits::default(),
        )
        .unwrap();
        RequestPlanner::default()
            .plan(
                chat.as_ref(),
                None,
                None,
                file,
                &TaskLimits::default(),
                &membership(),
            )
            .await
            .unwrap()
    }

    const VALID: &str = r#"{"tasks": [{"id": "mul", "specialist": "calculator", "description": "multiply", "capability": "math.eval", "input": {"expr": "6 * 7"}, "depends_on": []}]}"#;

    #[tokio::test]
    async fn a_valid_model_answer_is_the_decomposition() {
        let (tasks, plan) = plan(Some(provider(&[VALID]))).await;
        assert_eq!(tasks.tasks[0].id, "mul");
        assert_eq!(plan.provider, "scripted");
        assert_eq!((plan.fallback, plan.retried_because), (None, None));
    }

    #[tokio::test]
    async fn an_invalid_answer_is_retried_once_with_the_error() {
        let (tasks, plan) = plan(Some(provider(&["not json", VALID]))).await;
        assert_eq!(tasks.tasks[0].id, "mul");
        assert!(plan.retried_because.unwrap().contains("not JSON"));
    }

    #[tokio::test]
    async fn twice_invalid_falls_back_to_the_builtin_rules_and_says_why() {
        // Schema-valid but a cycle: the task-file validator refuses it.
        let cyclic = json!({"tasks": [
            {"id": "a", "specialist": "s", "description": "d", "capability": "math.eval", "input": {}, "depends_on": ["b"]},
            {"id": "b", "specialist": "s", "description": "d", "capability": "math.eval", "input": {}, "depends_on": ["a"]},
        ]})
        .to_string();
        let (tasks, plan) = plan(Some(provider(&[&cyclic, "{}"]))).await;
        assert_eq!(plan.provider, BUILTIN);
        let why = plan.fallback.unwrap();
        assert!(
            why.starts_with("scripted: invalid answer after a retry"),
            "{why}"
        );
        assert_eq!(tasks.tasks[0].capability, "math.eval");
        assert_eq!(tasks.tasks[0].input, json!({"expr": "6 * 7"}));
    }

    #[tokio::test]
    async fn without_a_model_the_builtin_rules_decompose() {
        let (_, plan) = plan(None).await;
        assert_eq!((plan.provider.as_str(), plan.fallback), (BUILTIN, None));
    }

    #[tokio::test]
    async fn a_remembered_plan_is_reused_only_while_it_still_validates() {
        use agentmesh_core::request::memory::MemoryEntry;
        use agentmesh_registry::{MemoryRegistry, RequestMemoryStore};
        let memory = MemoryRegistry::new();
        let remembered = |capability: &str| MemoryEntry {
            task: agentmesh_core::TaskId::new("earlier"),
            request: "calculate 6 * 7".into(),
            decomposition: serde_json::from_str(&VALID.replace("math.eval", capability)).unwrap(),
            quality: 1.0,
            provider: "scripted".into(),
            created_ms: 1,
            embedding: None,
        };
        memory
            .remember_request(remembered("math.eval"), 8)
            .await
            .unwrap();
        let file = || {
            parse(
                "name: r\nrequest: Calculate 6 * 7\n",
                &TaskLimits::default(),
            )
            .unwrap()
        };
        let planner = RequestPlanner::default();
        let recall = || async {
            planner
                .plan(
                    None,
                    None,
                    Some(&memory),
                    file(),
                    &TaskLimits::default(),
                    &membership(),
                )
                .await
                .unwrap()
        };
        let (tasks, plan) = recall().await;
        assert_eq!(tasks.tasks[0].id, "mul", "the remembered plan runs");
        let reused = plan.reused.expect("reused");
        assert_eq!(
            (reused.from_task.as_str(), reused.by.as_str()),
            ("earlier", "lexical")
        );
        assert_eq!(plan.provider, "scripted");
        // A capability no live worker offers any more: decomposed afresh.
        memory
            .remember_request(remembered("gone.tool"), 8)
            .await
            .unwrap();
        let (tasks, plan) = recall().await;
        assert_eq!(plan.reused, None);
        assert_eq!(plan.provider, BUILTIN);
        assert_eq!(tasks.tasks[0].capability, "math.eval");
    }

    fn review() -> Review {
        use agentmesh_core::request::refine::Reviewed;
        use agentmesh_core::task::file::{Strategy, SubtaskSpec};
        Review {
            round: 1,
            request: "count the words in '...'".into(),
            strategy: Strategy::Auto,
            score: 0.0,
            threshold: 0.7,
            tasks: vec![Reviewed {
                id: "count".into(),
                capability: "text.word_count".into(),
                description: "count".into(),
                input: json!({"text": "..."}),
                output: json!({"words": 0, "top_words": []}),
                score: 0.0,
            }],
            ran: vec![SubtaskSpec {
                id: "count".into(),
                capability: "text.word_count".into(),
                input: json!({"text": "..."}),
                depends_on: vec![],
                timeout_ms: None,
            }],
            name: "r".into(),
        }
    }

    async fn refine(chat: Arc<dyn ChatProvider>) -> Refinement {
        RequestPlanner::default()
            .refine(
                Some(&chat),
                &review(),
                &TaskLimits::default(),
                &membership(),
            )
            .await
    }

    #[tokio::test]
    async fn a_models_round_is_placed_in_the_rounds_namespace() {
        let answer = json!({"tasks": [
            {"id": "n1", "specialist": "s", "description": "recount", "capability": "text.word_count",
             "input": {"text": "some real words"}, "depends_on": [], "replaces": "count"},
            {"id": "n2", "specialist": "s", "description": "double it", "capability": "math.eval",
             "input": {"expr": "{{n1.words}} * 2"}, "depends_on": ["n1"]},
        ]})
        .to_string();
        let round = refine(provider(&[&answer])).await;
        assert_eq!(
            (round.provider.as_str(), round.fallback),
            ("scripted", None)
        );
        let ids: Vec<&str> = round.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["r1_n1", "r1_n2"]);
        assert_eq!(round.tasks[0].replaces.as_deref(), Some("count"));
        assert_eq!(round.tasks[1].input, json!({"expr": "{{r1_n1.words}} * 2"}));
    }

    #[tokio::test]
    async fn an_invalid_round_twice_falls_back_to_running_the_weak_tasks_again() {
        // A capability no worker offers, then not JSON.
        let unoffered = json!({"tasks": [
            {"id": "x", "specialist": "s", "description": "d", "capability": "gone.tool", "input": {}, "depends_on": []},
        ]})
        .to_string();
        let round = refine(provider(&[&unoffered, "no"])).await;
        assert_eq!(round.provider, BUILTIN);
        let why = round.fallback.expect("the reason is kept");
        assert!(
            why.starts_with("scripted: invalid answer after a retry"),
            "{why}"
        );
        assert_eq!(round.tasks.len(), 1);
        assert_eq!(round.tasks[0].id, "r1_count");
        assert_eq!(round.tasks[0].input, json!({"text": "..."}));
    }

    #[tokio::test]
    async fn a_summary_is_the_models_or_extractive_with_the_reason() {
        let outputs = vec![(
            "mul".to_owned(),
            "multiply".to_owned(),
            json!({"value": 42}),
        )];
        let planner = RequestPlanner::default();
        let chat = provider(&["The answer is 42."]);
        let (text, by, fallback) = planner.summarize(Some(&chat), "6 * 7?", &outputs).await;
        assert_eq!(
            (text.as_str(), by.as_str(), fallback),
            ("The answer is 42.", "scripted", None)
        );
        let blank = provider(&["  "]);
        let (text, by, fallback) = planner.summarize(Some(&blank), "6 * 7?", &outputs).await;
        assert_eq!(text, "multiply: {\"value\":42}");
        assert_eq!(by, BUILTIN);
        assert_eq!(fallback.as_deref(), Some("scripted: an empty summary"));
    }
}
