//! Turns a submitted document into a validated task, or into an error that
//! names the offending field.
//!
//! Every check runs before the cluster is touched, so a bad request is
//! refused at the edge and disturbs nothing already running.

use std::collections::{HashMap, HashSet};

use thiserror::Error;

use super::file::{Strategy, SubtaskSpec, TaskFile};
use super::limits::TaskLimits;
use super::message::{MAX_QUOTED, clip, list};
use super::reference::{Reference, ReferenceError, visit_references};
use crate::patterns::{self, PatternRules};

/// Length limit of task names and subtask ids.
pub const MAX_NAME_LEN: usize = 128;

/// Why a task file was refused. Every message stays under
/// [`MAX_ERROR_BYTES`](super::message::MAX_ERROR_BYTES) bytes whatever the
/// document holds (see [`TaskFileError::bounded`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TaskFileError {
    #[error("task file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("task file is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    /// A field holds a value the format allows but the cluster does not.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("dependency cycle: {}", describe_cycle(.0))]
    Cycle(Vec<String>),
    /// A mapping gives one key twice; one value would silently replace the
    /// other.
    #[error("duplicate key '{key}' {at}: a key may be given once")]
    DuplicateKey {
        key: String,
        /// Where: the field path and line in JSON, the line in YAML.
        at: String,
    },
    /// No live worker offers a capability; depends on the cluster's state,
    /// not on the document.
    #[error("{field}: no live {runner} offers capability '{capability}' (available: {available})")]
    CapabilityUnavailable {
        field: String,
        capability: String,
        /// `worker`, or `peer` for a `peer_consensus` task.
        runner: &'static str,
        available: String,
    },
    /// The document is valid but asks for something this cluster does not run.
    #[error("{field}: {message}")]
    Unsupported { field: String, message: String },
    /// Parsing stopped at a bound on the work a document may cause (nesting,
    /// alias expansion); `limit` names the bound, a [`TaskLimits`] field
    /// where there is one.
    #[error("task file {found}, over the limit {limit} = {max}")]
    OverLimit {
        limit: &'static str,
        max: usize,
        found: String,
    },
}

impl TaskFileError {
    /// Whether the error depends on the cluster's state rather than on the
    /// document itself (gRPC `FAILED_PRECONDITION` rather than
    /// `INVALID_ARGUMENT`).
    pub fn is_precondition(&self) -> bool {
        matches!(
            self,
            TaskFileError::CapabilityUnavailable { .. } | TaskFileError::Unsupported { .. }
        )
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        TaskFileError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The error with every text it carries clipped, so that its message
    /// stays under `MAX_ERROR_BYTES` whatever the document quoted into it
    /// (a field path through 200 KB keys, a parser message naming one).
    /// Lists are capped where they are written; this is the last resort.
    pub fn bounded(self) -> Self {
        const FIELD: usize = 256;
        const TEXT: usize = 640;
        use TaskFileError as E;
        match self {
            E::Syntax { format, message } => E::Syntax {
                format,
                message: clip(&message, TEXT),
            },
            E::Invalid { field, message } => E::Invalid {
                field: clip(&field, FIELD),
                message: clip(&message, TEXT),
            },
            E::Unsupported { field, message } => E::Unsupported {
                field: clip(&field, FIELD),
                message: clip(&message, TEXT),
            },
            E::DuplicateKey { key, at } => E::DuplicateKey {
                key: clip(&key, MAX_QUOTED),
                at: clip(&at, FIELD + 64),
            },
            E::CapabilityUnavailable {
                field,
                capability,
                runner,
                available,
            } => E::CapabilityUnavailable {
                field: clip(&field, FIELD),
                capability: clip(&capability, MAX_QUOTED),
                runner,
                available: clip(&available, TEXT - MAX_QUOTED * 2),
            },
            E::OverLimit { limit, max, found } => E::OverLimit {
                limit,
                max,
                found: clip(&found, TEXT),
            },
            other @ (E::TooLarge { .. } | E::Cycle(_)) => other,
        }
    }
}

/// A cycle by its first ids, counting the rest: a 1,024-task cycle named
/// in full was a 14 KB message.
pub fn describe_cycle(ids: &[String]) -> String {
    let tasks = ids.len().saturating_sub(1);
    format!("{tasks} tasks, {}", list(ids, " -> "))
}

/// Parses JSON or YAML (JSON when the first non-blank character is `{`).
///
/// Both stay within `limits` while they run: nesting is bounded in either
/// format, and YAML alias expansion by events and by text, so the work a
/// document causes is bounded by its size before any of it is validated.
pub fn parse(document: &str, limits: &TaskLimits) -> Result<TaskFile, TaskFileError> {
    parse_unbounded(document, limits).map_err(TaskFileError::bounded)
}

fn parse_unbounded(document: &str, limits: &TaskLimits) -> Result<TaskFile, TaskFileError> {
    if document.len() > limits.max_document_bytes {
        return Err(TaskFileError::TooLarge {
            size: document.len(),
            limit: limits.max_document_bytes,
        });
    }
    if document.trim_start().starts_with('{') {
        check_json_nesting(document, limits.max_nesting)?;
        check_json_duplicates(document)?;
        serde_json::from_str(document).map_err(|e| TaskFileError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })
    } else {
        serde_saphyr::from_str_with_options(document, yaml_options(limits))
            .map_err(|e| yaml_error(e, limits))
    }
}

/// serde_json has a fixed nesting limit of its own (128); one linear pass
/// over the brackets outside strings holds JSON to `max_nesting` as well,
/// before serde_json builds anything. Malformed documents pass through to
/// serde_json, which reports them.
fn check_json_nesting(document: &str, max_nesting: usize) -> Result<(), TaskFileError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (offset, byte) in document.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            _ if in_string => {}
            b'[' | b'{' => {
                depth += 1;
                if depth > max_nesting {
                    return Err(TaskFileError::OverLimit {
                        limit: "max_nesting",
                        max: max_nesting,
                        found: format!("nests too deep at byte {offset}"),
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// serde_json keeps the last of two equal keys in a `Value` (a task's
/// `input`) without a word, and no well-kept crate checks for them while
/// deserializing into one; this pass walks the document once, holding
/// only the keys of the mappings open along the current path, and refuses
/// the first key given twice by its path and line. Runs after the nesting
/// check, so its recursion is bounded. Syntax errors are left to the typed
/// parse that follows, which reports them the usual way.
fn check_json_duplicates(document: &str) -> Result<(), TaskFileError> {
    let mut found = None;
    let mut path = String::new();
    let mut deserializer = serde_json::Deserializer::from_str(document);
    let seed = unique::Keys {
        path: &mut path,
        found: &mut found,
    };
    match serde::de::DeserializeSeed::deserialize(seed, &mut deserializer) {
        Err(error) => match found {
            Some((key, at)) => Err(TaskFileError::DuplicateKey {
                key: clip(&key, MAX_QUOTED),
                at: format!(
                    "in {} at line {} column {}",
                    if at.is_empty() {
                        "the top level".into()
                    } else {
                        clip(&at, 200)
                    },
                    error.line(),
                    error.column()
                ),
            }),
            None => Ok(()),
        },
        Ok(()) => Ok(()),
    }
}

mod unique {
    //! A `DeserializeSeed` that reads any JSON value, keeps nothing but the
    //! keys of the mappings it is inside, and fails on a repeated key.

    use std::collections::HashSet;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    pub(super) struct Keys<'a> {
        /// The field path of the value being read (`tasks[0].input`).
        pub path: &'a mut String,
        /// The repeated key and the path of its mapping, once found.
        pub found: &'a mut Option<(String, String)>,
    }

    impl<'de> DeserializeSeed<'de> for Keys<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Keys<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0usize;
            loop {
                let len = self.path.len();
                self.path.push_str(&format!("[{i}]"));
                let more = seq.next_element_seed(Keys {
                    path: &mut *self.path,
                    found: &mut *self.found,
                })?;
                self.path.truncate(len);
                if more.is_none() {
                    return Ok(());
                }
                i += 1;
            }
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if seen.contains(key.as_ref()) {
                    // The error carries the line; the caller reads `found`.
                    *self.found = Some((key.into_owned(), self.path.clone()));
                    return Err(de::Error::custom("duplicate key"));
                }
                let len = self.path.len();
                if !self.path.is_empty() {
                    self.path.push('.');
                }
                self.path.push_str(&key);
                map.next_value_seed(Keys {
                    path: &mut *self.path,
                    found: &mut *self.found,
                })?;
                self.path.truncate(len);
                seen.insert(key.into_owned());
            }
            Ok(())
        }
    }
}

/// How YAML task files are read: within `limits`, and with the YAML 1.2
/// scalars serde_yaml 0.9 read, so a file means what it meant before
/// (`yes` and `0755` stay strings, `~: x` is a key named `~`, `<<` is an
/// ordinary key, `.inf` becomes `null`, unknown tags are refused). A key
/// given twice is refused anywhere, as it was for the task's own fields,
/// rather than the last one silently winning inside an input.
fn yaml_options(limits: &TaskLimits) -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(yaml_budget(limits));
    options.alias_limits.max_total_replayed_events = limits.max_alias_expansion;
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    options.null_as_string = true;
    options.merge_keys = serde_saphyr::MergeKeyPolicy::AsOrdinary;
    options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    options.reject_unsupported_tags = true;
    // The library's default, stated: it holds in every mapping, `input`
    // included, not only for the task's own fields.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.with_snippet = false;
    options
}

/// The parser's budget: nesting and expanded text from `limits`; the
/// library's own caps on nodes, events, aliases and anchors (250 000 nodes,
/// a million events, 50 000 aliases and anchors) are far above any task
/// within `max_subtasks` and `max_input_bytes` and stay as they are.
fn yaml_budget(limits: &TaskLimits) -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = limits.max_nesting;
    // The scanner reads a flow collection ahead before the nesting budget
    // sees its events, so its own flow limit is where `[[[[…` stops.
    budget.flow_nesting_limit = limits.max_nesting;
    budget.max_total_scalar_bytes = expanded_text_limit(limits);
    // Expansion is bounded outright below; the ratio heuristic would also
    // refuse an honest file that shares one anchor among many subtasks.
    budget.enforce_alias_anchor_ratio = false;
    budget
}

/// Scalar text a YAML document may hold once its aliases are expanded.
/// Escapes such as `\L` decode to more bytes than they take, so even a
/// file without aliases may hold a little more text than its own size.
fn expanded_text_limit(limits: &TaskLimits) -> usize {
    limits.max_document_bytes.saturating_mul(4)
}

/// A budget breach names its limit; anything else is a syntax error.
fn yaml_error(error: serde_saphyr::Error, limits: &TaskLimits) -> TaskFileError {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach as B;
    let at = error
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| format!(" at line {} column {}", l.line(), l.column()))
        .unwrap_or_default();
    let over = |limit, max, found: String| TaskFileError::OverLimit {
        limit,
        max,
        found: format!("{found}{at}"),
    };
    let budget = yaml_budget(limits);
    // A breach inside an alias's replay arrives wrapped in where the alias
    // was used; the breach itself decides the refusal.
    let mut cause = &error;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = cause {
        cause = error;
    }
    match cause {
        E::DuplicateMappingKey { key, location } => TaskFileError::DuplicateKey {
            key: key
                .as_deref()
                .map_or("(a non-text key)".into(), |k| clip(k, MAX_QUOTED)),
            at: format!("at line {} column {}", location.line(), location.column()),
        },
        E::ExternalMessage { source, .. }
            if matches!(
                source.as_ref(),
                serde_saphyr::ExternalMessageSource::Parser(scan)
                    if *scan.kind() == serde_saphyr::granit_parser::ErrorKind::RecursionLimitExceeded
            ) =>
        {
            over("max_nesting", limits.max_nesting, "nests too deep".into())
        }
        E::AliasReplayLimitExceeded { .. } => over(
            "max_alias_expansion",
            limits.max_alias_expansion,
            "expands YAML aliases to more events".into(),
        ),
        E::Budget { breach, .. } => match *breach {
            B::Depth { depth } => over(
                "max_nesting",
                limits.max_nesting,
                format!("nests {depth} levels deep"),
            ),
            B::ScalarBytes { total_scalar_bytes } => over(
                "4 × max_document_bytes",
                budget.max_total_scalar_bytes,
                format!("expands to {total_scalar_bytes} bytes of text"),
            ),
            B::Nodes { nodes } => over(
                "YAML nodes",
                budget.max_nodes,
                format!("has {nodes} YAML nodes"),
            ),
            B::Events { events } => over(
                "YAML events",
                budget.max_events,
                format!("has {events} YAML events"),
            ),
            B::Aliases { aliases } => over(
                "YAML aliases",
                budget.max_aliases,
                format!("has {aliases} YAML aliases"),
            ),
            B::Anchors { anchors } => over(
                "YAML anchors",
                budget.max_anchors,
                format!("has {anchors} YAML anchors"),
            ),
            ref other => TaskFileError::Syntax {
                format: "YAML",
                message: format!("over the YAML parser's budget ({other:?}){at}"),
            },
        },
        _ => TaskFileError::Syntax {
            format: "YAML",
            message: error.to_string(),
        },
    }
}

/// Parses and validates in one step; see [`validate`].
pub fn parse_and_validate(
    document: &str,
    limits: &TaskLimits,
    offers: &dyn Fn(&str) -> bool,
    available: &dyn Fn() -> Vec<String>,
) -> Result<TaskFile, TaskFileError> {
    validate(parse(document, limits)?, limits, offers, available)
}

/// Checks a parsed task file and returns it normalised: for the
/// `sequential` strategy every entry depends on the entry before it (within
/// each objective, for a `hierarchical` task).
///
/// `offers` tells whether a live worker offers a capability; `available`
/// lists what is offered, for the error message.
pub fn validate(
    file: TaskFile,
    limits: &TaskLimits,
    offers: &dyn Fn(&str) -> bool,
    available: &dyn Fn() -> Vec<String>,
) -> Result<TaskFile, TaskFileError> {
    validate_unbounded(file, limits, offers, available).map_err(TaskFileError::bounded)
}

fn validate_unbounded(
    mut file: TaskFile,
    limits: &TaskLimits,
    offers: &dyn Fn(&str) -> bool,
    available: &dyn Fn() -> Vec<String>,
) -> Result<TaskFile, TaskFileError> {
    let rules = check_header(&file)?;
    check_foreign_fields(&file)?;
    rules.check_shape(&mut file, limits)?;
    check_timeout("timeout_ms", file.timeout_ms, limits)?;
    let runner = rules.runner_name();
    let capability = |field: String, capability: &str| {
        if offers(capability) {
            return Ok(());
        }
        Err(TaskFileError::CapabilityUnavailable {
            field,
            capability: clip(capability, MAX_QUOTED),
            runner,
            available: list_or_none(available()),
        })
    };
    let dag = Dag {
        field: "tasks",
        strategy: file.strategy,
        limits,
        capability: &capability,
        elsewhere: &|_| None,
    };
    rules.check_tasks(&mut file, &dag)?;
    Ok(file)
}

/// The first few items and a count of the rest: a cluster may offer many
/// capabilities.
fn list_or_none(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        list(&items, ", ")
    }
}

/// The checks every pattern shares: the name, a pattern this cluster
/// runs, the strategy. Returns the pattern's rules.
fn check_header(file: &TaskFile) -> Result<&'static dyn PatternRules, TaskFileError> {
    if file.name.trim().is_empty() {
        return Err(TaskFileError::invalid("name", "must not be empty"));
    }
    if file.name.len() > MAX_NAME_LEN {
        return Err(TaskFileError::invalid(
            "name",
            format!(
                "is {} bytes, over the limit of {MAX_NAME_LEN}",
                file.name.len()
            ),
        ));
    }
    let rules = patterns::rules(file.pattern).ok_or_else(|| TaskFileError::Unsupported {
        field: "pattern".into(),
        message: format!(
            "pattern '{}' is not available in this cluster yet (supported: {})",
            file.pattern,
            patterns::supported().join(", ")
        ),
    })?;
    if file.strategy == Strategy::Hierarchical {
        // Levels are a pattern, not an order of one list of tasks; see
        // `Strategy`.
        return Err(TaskFileError::Unsupported {
            field: "strategy".into(),
            message: "strategy 'hierarchical' is not available (supported: sequential, parallel); for strategic, tactical and operational levels use pattern 'hierarchical' with objectives".into(),
        });
    }
    if file.strategy == Strategy::Auto {
        return Err(TaskFileError::invalid(
            "strategy",
            "'auto' is a hint for a request (request: instead of tasks:); a list of tasks is sequential or parallel",
        ));
    }
    Ok(rules)
}

/// Refuses a field that belongs to another pattern than the task's.
fn check_foreign_fields(file: &TaskFile) -> Result<(), TaskFileError> {
    for (field, given) in [
        ("aggregation", file.aggregation.is_some()),
        ("quality_threshold", file.quality_threshold.is_some()),
    ] {
        if given && file.request.is_none() {
            return Err(TaskFileError::invalid(
                field,
                "applies to a request (request: instead of tasks:) only",
            ));
        }
    }
    for field in file.pattern_fields() {
        let owner = patterns::owner_of(field);
        if owner.is_some_and(|owner| owner != file.pattern) {
            return Err(TaskFileError::invalid(
                field,
                format!(
                    "applies to pattern {} only (this task's pattern is {})",
                    owner.unwrap_or(file.pattern),
                    file.pattern
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_timeout(
    field: &str,
    timeout: Option<u64>,
    limits: &TaskLimits,
) -> Result<(), TaskFileError> {
    match timeout {
        Some(0) => Err(TaskFileError::invalid(field, "must be greater than 0")),
        Some(ms) if ms > limits.max_timeout_ms => Err(TaskFileError::invalid(
            field,
            format!("{ms} ms is over the limit of {} ms", limits.max_timeout_ms),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(crate) fn invalid_id(field: String, id: &str) -> TaskFileError {
    TaskFileError::invalid(
        field,
        format!(
            "'{}' is not a valid id (1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ -)",
            clip(id, MAX_QUOTED)
        ),
    )
}

/// One list of subtasks forming a DAG, with what its checks need: the
/// `tasks` of a flat task or of one objective, checked alike.
#[derive(Clone, Copy)]
pub struct Dag<'a> {
    /// Where the list is in the document (`tasks`, `objectives[1].tasks`),
    /// the prefix of every error's field.
    pub(crate) field: &'a str,
    pub(crate) strategy: Strategy,
    pub(crate) limits: &'a TaskLimits,
    /// Refuses a capability (named at the given field) no live runner
    /// offers.
    pub(crate) capability: &'a dyn Fn(String, &str) -> Result<(), TaskFileError>,
    /// A hint for a reference to an id this list does not have but another
    /// part of the document does.
    pub(crate) elsewhere: &'a dyn Fn(&str) -> Option<String>,
}

impl Dag<'_> {
    /// The field of entry `i`, followed by `rest` (`.id`, `.input.expr`).
    fn at(&self, i: usize, rest: &str) -> String {
        format!("{}[{i}]{rest}", self.field)
    }

    pub fn check(&self, tasks: &mut [SubtaskSpec]) -> Result<(), TaskFileError> {
        // Ids first, so chaining below never works on a duplicate.
        self.check_ids(tasks)?;
        if self.strategy == Strategy::Sequential {
            for i in 1..tasks.len() {
                let previous = tasks[i - 1].id.clone();
                if !tasks[i].depends_on.contains(&previous) {
                    tasks[i].depends_on.push(previous);
                }
            }
        }
        let tasks = &*tasks;
        let index = self.check_ids(tasks)?;
        let deps = self.check_dependencies(tasks, &index)?;
        let order = topological_order(tasks, &deps)?;
        self.check_depth(tasks, &deps, &order)?;
        let ancestors = ancestors(&deps, &order);
        for (i, task) in tasks.iter().enumerate() {
            self.check_entry(task, i, &index, &ancestors[i])?;
            (self.capability)(self.at(i, ".capability"), &task.capability)?;
        }
        Ok(())
    }

    fn check_ids<'t>(
        &self,
        tasks: &'t [SubtaskSpec],
    ) -> Result<HashMap<&'t str, usize>, TaskFileError> {
        let mut index = HashMap::with_capacity(tasks.len());
        for (i, task) in tasks.iter().enumerate() {
            if !valid_id(&task.id) {
                return Err(invalid_id(self.at(i, ".id"), &task.id));
            }
            if let Some(first) = index.insert(task.id.as_str(), i) {
                return Err(TaskFileError::invalid(
                    self.at(i, ".id"),
                    format!(
                        "duplicate id '{}' (first used by {})",
                        task.id,
                        self.at(first, "")
                    ),
                ));
            }
        }
        Ok(index)
    }

    fn check_dependencies(
        &self,
        tasks: &[SubtaskSpec],
        index: &HashMap<&str, usize>,
    ) -> Result<Vec<Vec<usize>>, TaskFileError> {
        tasks
            .iter()
            .enumerate()
            .map(|(i, task)| {
                let mut deps = Vec::with_capacity(task.depends_on.len());
                for dep in &task.depends_on {
                    let field = || self.at(i, ".depends_on");
                    let &d = index.get(dep.as_str()).ok_or_else(|| {
                        let mut message = format!("unknown task id '{}'", clip(dep, MAX_QUOTED));
                        if let Some(hint) = (self.elsewhere)(dep) {
                            message = format!("{message} ({hint})");
                        }
                        TaskFileError::invalid(field(), message)
                    })?;
                    if d == i {
                        return Err(TaskFileError::invalid(
                            field(),
                            format!("task '{dep}' depends on itself"),
                        ));
                    }
                    if !deps.contains(&d) {
                        deps.push(d);
                    }
                }
                Ok(deps)
            })
            .collect()
    }

    fn check_depth(
        &self,
        tasks: &[SubtaskSpec],
        deps: &[Vec<usize>],
        order: &[usize],
    ) -> Result<(), TaskFileError> {
        let mut depth = vec![1usize; deps.len()];
        for &i in order {
            depth[i] = 1 + deps[i].iter().map(|&d| depth[d]).max().unwrap_or(0);
            if depth[i] > self.limits.max_depth {
                return Err(TaskFileError::invalid(
                    self.at(i, ".depends_on"),
                    format!(
                        "task '{}' ends a dependency chain of {} tasks, over the limit of {}",
                        tasks[i].id, depth[i], self.limits.max_depth
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_entry(
        &self,
        task: &SubtaskSpec,
        i: usize,
        index: &HashMap<&str, usize>,
        ancestors: &HashSet<usize>,
    ) -> Result<(), TaskFileError> {
        if task.capability.trim().is_empty() {
            return Err(TaskFileError::invalid(
                self.at(i, ".capability"),
                "must not be empty",
            ));
        }
        check_timeout(&self.at(i, ".timeout_ms"), task.timeout_ms, self.limits)?;
        let input_size = serde_json::to_vec(&task.input).map_or(0, |v| v.len());
        if input_size > self.limits.max_input_bytes {
            return Err(TaskFileError::invalid(
                self.at(i, ".input"),
                format!(
                    "is {input_size} bytes as JSON, over the limit of {}",
                    self.limits.max_input_bytes
                ),
            ));
        }
        let mut first_error = None;
        let mut references = 0usize;
        visit_references(&task.input, &mut |path, refs| {
            if let Ok(refs) = &refs {
                references += refs.len();
            }
            if first_error.is_some() {
                return;
            }
            let field = if path.is_empty() {
                self.at(i, ".input")
            } else {
                self.at(i, &format!(".input.{path}"))
            };
            first_error = self
                .check_references(task.id.as_str(), refs, index, ancestors)
                .err()
                .map(|message| TaskFileError::invalid(field, message));
        });
        // Each reference is a lookup on the coordinator's actor when the
        // subtask starts; counted here so an absurd count is refused now.
        if references > self.limits.max_input_references {
            return Err(TaskFileError::invalid(
                self.at(i, ".input"),
                format!(
                    "holds {references} references, over the limit max_input_references = {}",
                    self.limits.max_input_references
                ),
            ));
        }
        first_error.map_or(Ok(()), Err)
    }

    fn check_references(
        &self,
        task: &str,
        refs: Result<Vec<Reference>, ReferenceError>,
        index: &HashMap<&str, usize>,
        ancestors: &HashSet<usize>,
    ) -> Result<(), String> {
        for reference in refs.map_err(|e| e.to_string())? {
            match index.get(reference.task.as_str()) {
                None => {
                    let mut message = format!(
                        "reference {} names unknown task '{}'",
                        reference.display(),
                        clip(&reference.task, MAX_QUOTED)
                    );
                    if let Some(hint) = (self.elsewhere)(&reference.task) {
                        message = format!("{message} ({hint})");
                    }
                    return Err(message);
                }
                Some(d) if !ancestors.contains(d) => {
                    return Err(format!(
                        "reference {} names task '{}', which is not a dependency of '{task}' (add it to depends_on)",
                        reference.display(),
                        reference.task
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Kahn's algorithm; on a cycle, reports one cycle by name.
fn topological_order(
    tasks: &[SubtaskSpec],
    deps: &[Vec<usize>],
) -> Result<Vec<usize>, TaskFileError> {
    let n = deps.len();
    let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        let i = order[next];
        next += 1;
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                order.push(j);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    let cycle = find_cycle(deps, &indegree);
    Err(TaskFileError::Cycle(
        cycle.into_iter().map(|i| tasks[i].id.clone()).collect(),
    ))
}

/// Walks dependencies among the nodes Kahn's algorithm could not order
/// (every one of them has an unordered dependency) until a node repeats.
fn find_cycle(deps: &[Vec<usize>], indegree: &[usize]) -> Vec<usize> {
    let Some(start) = (0..deps.len()).find(|&i| indegree[i] > 0) else {
        return Vec::new();
    };
    let mut path = vec![start];
    let mut position = HashMap::from([(start, 0)]);
    let mut current = start;
    loop {
        let Some(&next) = deps[current].iter().find(|&&d| indegree[d] > 0) else {
            return path;
        };
        if let Some(&at) = position.get(&next) {
            // The walk follows "depends on" edges; reverse it so the message
            // reads in execution order (a -> b means b waits for a).
            let mut cycle: Vec<usize> = path[at..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return cycle;
        }
        position.insert(next, path.len());
        path.push(next);
        current = next;
    }
}

/// The transitive dependencies of every task, whose outputs its references
/// may use.
fn ancestors(deps: &[Vec<usize>], order: &[usize]) -> Vec<HashSet<usize>> {
    let mut all: Vec<HashSet<usize>> = vec![HashSet::new(); deps.len()];
    for &i in order {
        let mut mine = HashSet::new();
        for &d in &deps[i] {
            mine.insert(d);
            mine.extend(all[d].iter().copied());
        }
        all[i] = mine;
    }
    all
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod parse_tests;

#[cfg(test)]
mod bounded_tests;
