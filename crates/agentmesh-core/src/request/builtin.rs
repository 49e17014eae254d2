//! The deterministic built-in decomposer: what runs a request when no
//! model is configured, and when a model's answer is invalid twice.
//!
//! It reads the request as a list of clauses and routes each like the
//! reactive fast path does, with its keyword table and extractors:
//!
//! - clauses are cut at sentence ends (`.`, `!`, `?`, `;`, a new line)
//!   and at the connectors `then`, `after that`, `next`, `finally`, `also`
//!   and `additionally`, never inside quotes, a number (`2.5`) or a URL;
//! - each clause is routed by keywords to one tool of the built-in table
//!   that a live worker offers, with the tool's input read out of the
//!   clause (`calculate 6 * 7` → `math.eval {"expr": "6 * 7"}`, `count the
//!   words in "…"` → `text.word_count`, a `$` path and a JSON document →
//!   `json.query`, an http(s) URL → `http.get`);
//! - a clause opened by `then`, `after that`, `next` or `finally` depends on
//!   the clause before it; in such a clause `the result`, `it` or `that`
//!   stands for the previous task's main output (`value` of `math.eval`,
//!   `words` of `text.word_count`, `first` of `json.query`), written as a
//!   `{{id.field}}` reference (`then multiply the result by 3`... is read
//!   as `{{t1_word_count.words}} * 3` when phrased `then calculate the
//!   result times 3`);
//! - every other clause runs in parallel; strategy `sequential` chains
//!   them all, `parallel` keeps only the dependencies a reference needs.
//!
//! It cannot: understand a clause no keyword of the table places
//! ("summarise this essay"), call a tool outside the table, read numbers
//! written as words, or resolve a reference to anything but the clause just
//! before. Clauses it cannot place are skipped and listed in the record
//! (and lower the quality score); a request with no placeable clause is
//! refused, naming what is on offer.

use serde_json::Value;

use super::{Decomposition, PlannedTask, RequestError};
use crate::reactive::{self, ReactiveLimits, RoutingTable};
use crate::task::file::Strategy;
use crate::task::message::{MAX_QUOTED, clip, list};

/// What the built-in decomposer made of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinDecomposition {
    pub decomposition: Decomposition,
    /// Clauses no tool on offer fits, in order.
    pub skipped: Vec<String>,
}

/// A number no request holds by chance, standing for "the previous
/// result" while the clause's input is extracted.
const SENTINEL: &str = "918273645";

/// Words that make a clause wait for the one before it.
const SEQUENTIAL: [&str; 5] = ["then", "after that", "afterwards", "next", "finally"];
/// Words that start an independent clause. A bare "and" joins words
/// ("words and lines") as often as clauses, so it is none.
const PARALLEL: [&str; 2] = ["also", "additionally"];
/// Phrases that stand for the previous task's output.
const PREVIOUS: [&str; 6] = [
    "the result",
    "that result",
    "the answer",
    "the count",
    "it",
    "that",
];

/// The kind of specialist that runs a capability, for the record.
pub fn specialist(capability: &str) -> &'static str {
    match capability {
        "math.eval" => "calculator",
        "text.word_count" => "text analyst",
        "json.query" => "data extractor",
        "http.get" => "web fetcher",
        _ => "generalist",
    }
}

/// The output fields of a built-in capability, and the one a later
/// clause's "the result" means.
pub fn outputs(capability: &str) -> (&'static [&'static str], Option<&'static str>) {
    match capability {
        "math.eval" => (&["value"], Some("value")),
        "text.word_count" => (&["words", "chars", "lines", "top_words"], Some("words")),
        "json.query" => (&["matches", "first", "count"], Some("first")),
        "http.get" => (&["status", "body"], None),
        _ => (&[], None),
    }
}

/// Decomposes `request` into tasks on the capabilities `offers` accepts,
/// at most `max_subtasks` of them.
pub fn decompose(
    request: &str,
    strategy: Strategy,
    offers: &dyn Fn(&str) -> bool,
    available: &[String],
    max_subtasks: usize,
) -> Result<BuiltinDecomposition, RequestError> {
    let mut table = RoutingTable::builtin();
    table.tools.retain(|route| offers(&route.tool));
    let limits = ReactiveLimits::default();
    let mut tasks: Vec<PlannedTask> = Vec::new();
    let mut skipped = Vec::new();
    for clause in clauses(request) {
        if tasks.len() >= max_subtasks {
            skipped.push(clip(&clause.text, MAX_QUOTED));
            continue;
        }
        let previous = clause.after_previous.then(|| tasks.last()).flatten();
        let reference = previous.and_then(|p| {
            outputs(&p.capability)
                .1
                .map(|field| format!("{{{{{}.{field}}}}}", p.id))
        });
        let text = match &reference {
            Some(_) => stand_in_previous(&clause.text),
            None => clause.text.clone(),
        };
        let routed = reactive::route(&text, &table, &limits).ok();
        let Some(choice) = routed.and_then(|r| r.tool) else {
            skipped.push(clip(&clause.text, MAX_QUOTED));
            continue;
        };
        let mut input = choice.input;
        let mut reads_previous = false;
        if let Some(reference) = &reference {
            reads_previous = replace_sentinel(&mut input, reference);
        }
        let id = format!(
            "t{}_{}",
            tasks.len() + 1,
            choice.tool.rsplit('.').next().unwrap_or("task")
        );
        let waits = match strategy {
            Strategy::Sequential => tasks.last().is_some(),
            Strategy::Parallel => reads_previous,
            Strategy::Auto | Strategy::Hierarchical => previous.is_some(),
        };
        let depends_on = match (waits, tasks.last()) {
            (true, Some(last)) => vec![last.id.clone()],
            _ => Vec::new(),
        };
        let inputs = match (reads_previous, previous) {
            (true, Some(p)) => vec![p.id.clone()],
            _ => Vec::new(),
        };
        tasks.push(PlannedTask {
            id,
            specialist: specialist(&choice.tool).to_owned(),
            description: clip(clause.text.trim(), super::MAX_DESCRIPTION_CHARS),
            outputs: outputs(&choice.tool)
                .0
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            capability: choice.tool,
            input,
            inputs,
            depends_on,
            replaces: None,
        });
    }
    if tasks.is_empty() {
        return Err(RequestError::NothingPlaced {
            request: clip(request, MAX_QUOTED),
            available: if available.is_empty() {
                "none".into()
            } else {
                list(available, ", ")
            },
        });
    }
    Ok(BuiltinDecomposition {
        decomposition: Decomposition { tasks },
        skipped,
    })
}

/// One clause of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    pub text: String,
    /// Opened by a sequential connector (`then`, ...).
    pub after_previous: bool,
}

/// The clauses of `request`, cut at sentence ends and connectors outside
/// quotes. Empty clauses are dropped.
pub fn clauses(request: &str) -> Vec<Clause> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let chars: Vec<char> = request.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1).copied();
        match quote {
            Some(q) if c == q && !next.is_some_and(char::is_alphanumeric) => quote = None,
            Some(_) => {}
            None if matches!(c, '"' | '\u{201c}')
                || (c == '\'' && !prev.is_some_and(char::is_alphanumeric)) =>
            {
                quote = Some(if c == '\u{201c}' { '\u{201d}' } else { c });
            }
            None if matches!(c, '!' | '?' | ';' | '\n')
                // A dot ends a sentence only before a space or the end,
                // so `2.5` and `example.org` stay whole.
                || (c == '.' && next.is_none_or(char::is_whitespace)) =>
            {
                pieces.push(std::mem::take(&mut current));
                continue;
            }
            None => {}
        }
        current.push(c);
    }
    pieces.push(current);
    let mut out = Vec::new();
    for piece in pieces {
        for (text, after_previous) in split_connectors(&piece) {
            if text.chars().any(char::is_alphanumeric) {
                out.push(Clause {
                    text,
                    after_previous,
                });
            }
        }
    }
    out
}

/// Cuts a sentence at connectors outside quotes; each part says whether a
/// sequential connector opened it.
fn split_connectors(sentence: &str) -> Vec<(String, bool)> {
    let words = quoted_aware_words(sentence);
    let mut parts: Vec<(String, bool)> = Vec::new();
    let mut current = String::new();
    let mut after_previous = false;
    let mut i = 0;
    while i < words.len() {
        let (word, quoted) = &words[i];
        let bare = word
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase();
        let two = words.get(i + 1).map(|(w, _)| {
            format!(
                "{bare} {}",
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            )
        });
        let starts = current.trim().is_empty();
        let (connector, width, sequential) = if *quoted {
            (false, 1, false)
        } else if two
            .as_deref()
            .is_some_and(|t| SEQUENTIAL.contains(&t) || t == "and then")
        {
            (true, 2, true)
        } else if SEQUENTIAL.contains(&bare.as_str()) {
            (true, 1, true)
        } else if two.as_deref().is_some_and(|t| t == "and also") {
            (true, 2, false)
        } else if PARALLEL.contains(&bare.as_str()) {
            (true, 1, false)
        } else {
            (false, 1, false)
        };
        if connector {
            if !starts {
                parts.push((std::mem::take(&mut current), after_previous));
            }
            after_previous = sequential || (starts && after_previous);
            i += width;
            continue;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
        i += 1;
    }
    parts.push((current, after_previous));
    parts
        .into_iter()
        .map(|(t, s)| (t.trim().trim_end_matches(',').trim().to_owned(), s))
        .collect()
}

/// The sentence's words, each with whether it lies inside quotes.
fn quoted_aware_words(sentence: &str) -> Vec<(String, bool)> {
    let mut words = Vec::new();
    let mut quote: Option<char> = None;
    for word in sentence.split_whitespace() {
        let inside = quote.is_some();
        let first = word.chars().next();
        if quote.is_none() && matches!(first, Some('"' | '\'' | '\u{201c}')) {
            let open = first.unwrap_or('"');
            let close = if open == '\u{201c}' { '\u{201d}' } else { open };
            let rest = &word[open.len_utf8()..];
            if !rest.trim_end_matches([',', '.']).ends_with(close) {
                quote = Some(close);
            }
            words.push((word.to_owned(), true));
            continue;
        }
        if let Some(close) = quote
            && word.trim_end_matches([',', '.', ';']).ends_with(close)
        {
            quote = None;
        }
        words.push((word.to_owned(), inside));
    }
    words
}

/// The clause with a phrase meaning "the previous result" replaced by the
/// sentinel number, so the expression extractor keeps it.
fn stand_in_previous(clause: &str) -> String {
    // ASCII lowercasing keeps every byte offset, so `at` indexes `clause`.
    let lower = clause.to_ascii_lowercase();
    for phrase in PREVIOUS {
        let mut from = 0;
        while let Some(at) = lower[from..].find(phrase).map(|i| i + from) {
            let before = lower[..at].chars().next_back();
            let after = lower[at + phrase.len()..].chars().next();
            let whole = !before.is_some_and(char::is_alphanumeric)
                && !after.is_some_and(char::is_alphanumeric);
            if whole {
                return format!(
                    "{}{SENTINEL}{}",
                    &clause[..at],
                    &clause[at + phrase.len()..]
                );
            }
            from = at + phrase.len();
        }
    }
    clause.to_owned()
}

/// Replaces the sentinel in every string of `input` by `reference`;
/// whether it found one.
fn replace_sentinel(input: &mut Value, reference: &str) -> bool {
    match input {
        Value::String(s) if s.contains(SENTINEL) => {
            *s = s.replace(SENTINEL, reference);
            true
        }
        // Every string is visited: a short-circuit would leave the
        // sentinel in a later one.
        Value::Array(items) => {
            let mut found = false;
            for v in items {
                found |= replace_sentinel(v, reference);
            }
            found
        }
        Value::Object(map) => {
            let mut found = false;
            for v in map.values_mut() {
                found |= replace_sentinel(v, reference);
            }
            found
        }
        _ => false,
    }
}
