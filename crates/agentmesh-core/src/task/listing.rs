//! Listing task records and submitting them idempotently: the pure parts.
//!
//! A listing walks task records newest first, from a [`ListCursor`] (the
//! last record of the previous page), and keeps those a [`TaskFilter`]
//! matches. Stores read at most a bounded number of records per page
//! ([`MAX_LIST_SCAN`]), so a page of a selective filter may come back short
//! and still carry a cursor: the client follows it.
//!
//! An [`IdempotencyKey`] names one submit of one client, so that a client
//! whose reply was lost can send the same submit again and get the first
//! task back instead of a second one.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::file::Pattern;
use super::record::{Status, TaskRecord};
use crate::TaskId;
use crate::fairness::ClientId;

/// Records per page when the caller names no size.
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// The largest page a caller may ask for: one reply stays well under the
/// gRPC message limit with record summaries.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Records a store reads for one page at most, matching or not. A filter
/// that matches few records returns a short page (with a cursor to go on
/// from) rather than reading the whole store in one call.
pub const MAX_LIST_SCAN: usize = 2000;

/// The longest idempotency key accepted, in bytes: enough for a UUID or a
/// hash, short enough to sit in an etcd key and every log line.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Which task records a listing keeps; `None` and empty fields match all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Records in any of these states; empty for any state.
    pub statuses: Vec<Status>,
    pub pattern: Option<Pattern>,
    pub name_prefix: Option<String>,
    /// Records of this owner (the authenticated submitter).
    pub owner: Option<ClientId>,
    /// Records created strictly after this Unix time in milliseconds.
    pub created_after_ms: Option<u64>,
}

impl TaskFilter {
    pub fn matches(&self, record: &TaskRecord) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&record.status))
            && self.pattern.is_none_or(|p| p == record.pattern)
            && self
                .name_prefix
                .as_deref()
                .is_none_or(|prefix| record.name.starts_with(prefix))
            && self
                .owner
                .as_ref()
                .is_none_or(|owner| record.owner.as_ref() == Some(owner))
            && self.created_after_ms.is_none_or(|t| record.created_ms > t)
    }

    /// Whether no record at or after (older than) `created_ms` can match:
    /// a newest-first walk stops there.
    pub fn exhausted_at(&self, created_ms: u64) -> bool {
        self.created_after_ms.is_some_and(|t| created_ms <= t)
    }
}

/// A position in the newest-first order of task records: the record a
/// page ended with. Records are ordered by `created_ms` descending, then
/// by id ascending, so the order is total and stable while records are
/// added (a new record is newer than every cursor handed out before).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListCursor {
    pub created_ms: u64,
    pub id: TaskId,
}

/// Why a page token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed page token: pass the next_page_token of a previous page unchanged")]
pub struct BadPageToken;

impl ListCursor {
    pub fn of(record: &TaskRecord) -> Self {
        Self {
            created_ms: record.created_ms,
            id: record.id.clone(),
        }
    }

    /// Whether `record` comes after this cursor in the listing order.
    pub fn is_before(&self, record: &TaskRecord) -> bool {
        (std::cmp::Reverse(self.created_ms), self.id.as_str())
            < (std::cmp::Reverse(record.created_ms), record.id.as_str())
    }

    /// An opaque page token: hex of `<created_ms>/<id>`, so clients treat
    /// it as a value to hand back rather than something to build.
    pub fn encode(&self) -> String {
        let plain = format!("{}/{}", self.created_ms, self.id);
        plain.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(token: &str) -> Result<Self, BadPageToken> {
        // A task id is at most a UUID; anything far longer is not a token.
        if token.len() > 512 || !token.len().is_multiple_of(2) {
            return Err(BadPageToken);
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| {
                let pair = token.get(i..i + 2).ok_or(BadPageToken)?;
                u8::from_str_radix(pair, 16).map_err(|_| BadPageToken)
            })
            .collect::<Result<Vec<u8>, _>>()?;
        let plain = String::from_utf8(bytes).map_err(|_| BadPageToken)?;
        let (created, id) = plain.split_once('/').ok_or(BadPageToken)?;
        let created_ms = created.parse().map_err(|_| BadPageToken)?;
        if id.is_empty() || id.contains('/') {
            return Err(BadPageToken);
        }
        Ok(Self {
            created_ms,
            id: TaskId::new(id),
        })
    }
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskPage {
    pub records: Vec<TaskRecord>,
    /// Where the next page starts; `None` when no record is left.
    pub next: Option<ListCursor>,
}

/// What one page of a listing asks a store for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskQuery {
    pub filter: TaskFilter,
    /// Start after this record; `None` for the newest.
    pub after: Option<ListCursor>,
    /// Matching records wanted, 1 to [`MAX_PAGE_SIZE`].
    pub limit: usize,
    /// Records read at most, matching or not (see [`MAX_LIST_SCAN`]).
    pub scan: usize,
}

impl TaskQuery {
    /// A query for `page_size` records (0 for [`DEFAULT_PAGE_SIZE`],
    /// capped at [`MAX_PAGE_SIZE`]).
    pub fn new(filter: TaskFilter, after: Option<ListCursor>, page_size: usize) -> Self {
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        Self {
            filter,
            after,
            limit,
            scan: MAX_LIST_SCAN.max(limit),
        }
    }
}

/// Collects one page from records in listing order (newest first, all
/// after the query's cursor), reading at most `query.scan` of them; the
/// in-memory store lists this way, and the etcd store per batch it reads.
#[derive(Debug)]
pub struct PageBuilder<'q> {
    query: &'q TaskQuery,
    page: TaskPage,
    scanned: usize,
    last: Option<ListCursor>,
    done: bool,
}

/// What [`PageBuilder::offer`] tells the caller to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    More,
    Stop,
}

impl<'q> PageBuilder<'q> {
    pub fn new(query: &'q TaskQuery) -> Self {
        Self {
            query,
            page: TaskPage::default(),
            scanned: 0,
            last: None,
            done: false,
        }
    }

    /// Offers the next record (or `None` for an index entry whose record
    /// is gone, which counts against the scan at `cursor`).
    pub fn offer(&mut self, cursor: ListCursor, record: Option<TaskRecord>) -> Next {
        if self.done {
            return Next::Stop;
        }
        if self.query.filter.exhausted_at(cursor.created_ms) {
            self.done = true;
            self.last = None;
            return Next::Stop;
        }
        self.scanned += 1;
        if let Some(record) = record.filter(|r| self.query.filter.matches(r)) {
            self.page.records.push(record);
        }
        self.last = Some(cursor);
        if self.page.records.len() >= self.query.limit || self.scanned >= self.query.scan {
            return Next::Stop;
        }
        Next::More
    }

    /// How many more records the page may read.
    pub fn budget(&self) -> usize {
        if self.done {
            0
        } else {
            self.query.scan.saturating_sub(self.scanned)
        }
    }

    /// The page. `more` tells whether the walk stopped at a [`Next::Stop`]
    /// with records possibly left after the last one offered (a store that
    /// cannot tell cheaply passes `true`: the next page is then empty).
    pub fn finish(mut self, more: bool) -> TaskPage {
        if !self.done && more {
            self.page.next = self.last;
        }
        self.page
    }
}

/// A client's name for one submit (see [`TaskRecord::idempotency_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdempotencyKeyError {
    #[error("idempotency_key is {len} bytes, over the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error(
        "idempotency_key may only hold ASCII letters, digits and '.', '_', '-', ':' (found {found:?} at byte {at})"
    )]
    BadCharacter { found: char, at: usize },
}

impl IdempotencyKey {
    /// Checks a key that came from outside; `None` for an empty one.
    pub fn parse(key: &str) -> Result<Option<Self>, IdempotencyKeyError> {
        if key.is_empty() {
            return Ok(None);
        }
        if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(IdempotencyKeyError::TooLong {
                len: key.len(),
                limit: MAX_IDEMPOTENCY_KEY_BYTES,
            });
        }
        if let Some((at, found)) = key
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
        {
            return Err(IdempotencyKeyError::BadCharacter { found, at });
        }
        Ok(Some(Self(key.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whose keys an idempotency key is unique among: the owner when the
/// submitter was authenticated, else the client name. Two clients may use
/// the same key for different tasks.
pub fn idempotency_scope(record: &TaskRecord) -> ClientId {
    record
        .owner
        .clone()
        .or_else(|| record.client.clone())
        .unwrap_or_else(ClientId::unnamed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::file::TaskFile;

    fn record(id: &str, created_ms: u64, status: Status, name: &str) -> TaskRecord {
        let file: TaskFile = serde_json::from_value(serde_json::json!({
            "name": name,
            "tasks": [{"id": "a", "capability": "math.eval", "input": {}}]
        }))
        .unwrap();
        let mut record = TaskRecord::new(TaskId::new(id), file, created_ms);
        record.status = status;
        record
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_garbage() {
        let cursor = ListCursor {
            created_ms: 1_795_491_266_963,
            id: TaskId::new("25fe92dd-2de9-494f-8763-2655701f290f"),
        };
        let token = cursor.encode();
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
        assert_eq!(ListCursor::decode(&token), Ok(cursor));
        for bad in ["", "zz", "abc", "31", &"41".repeat(300), "2f61"] {
            assert_eq!(ListCursor::decode(bad), Err(BadPageToken), "{bad}");
        }
    }

    #[test]
    fn filters_match_each_field() {
        let mut r = record("t1", 100, Status::Running, "nightly-report");
        r.owner = Some(ClientId::parse("alice").unwrap());
        assert!(TaskFilter::default().matches(&r));
        let by = |f: TaskFilter| f.matches(&r);
        assert!(by(TaskFilter {
            statuses: vec![Status::Pending, Status::Running],
            ..Default::default()
        }));
        assert!(!by(TaskFilter {
            statuses: vec![Status::Completed],
            ..Default::default()
        }));
        assert!(by(TaskFilter {
            pattern: Some(Pattern::CoordinatorWorker),
            ..Default::default()
        }));
        assert!(!by(TaskFilter {
            pattern: Some(Pattern::PeerConsensus),
            ..Default::default()
        }));
        assert!(by(TaskFilter {
            name_prefix: Some("nightly-".into()),
            ..Default::default()
        }));
        assert!(!by(TaskFilter {
            name_prefix: Some("weekly".into()),
            ..Default::default()
        }));
        assert!(by(TaskFilter {
            owner: Some(ClientId::parse("alice").unwrap()),
            ..Default::default()
        }));
        assert!(!by(TaskFilter {
            owner: Some(ClientId::parse("bob").unwrap()),
            ..Default::default()
        }));
        assert!(by(TaskFilter {
            created_after_ms: Some(99),
            ..Default::default()
        }));
        assert!(!by(TaskFilter {
            created_after_ms: Some(100),
            ..Default::default()
        }));
    }

    #[test]
    fn pages_stop_at_the_limit_the_scan_budget_and_the_time_bound() {
        let records: Vec<_> = (0..10u64)
            .rev()
            .map(|i| {
                let status = if i % 2 == 0 {
                    Status::Completed
                } else {
                    Status::Failed
                };
                record(&format!("t{i}"), 100 + i, status, "x")
            })
            .collect();
        let run = |query: &TaskQuery| {
            let mut page = PageBuilder::new(query);
            let mut rest = records
                .iter()
                .filter(|r| query.after.as_ref().is_none_or(|c| c.is_before(r)));
            let mut more = false;
            for r in rest.by_ref() {
                if page.offer(ListCursor::of(r), Some(r.clone())) == Next::Stop {
                    more = true;
                    break;
                }
            }
            let more = more && rest.next().is_some();
            page.finish(more)
        };
        let ids = |page: &TaskPage| {
            page.records
                .iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
        };

        let first = run(&TaskQuery::new(TaskFilter::default(), None, 4));
        assert_eq!(ids(&first), ["t9", "t8", "t7", "t6"]);
        let second = run(&TaskQuery::new(
            TaskFilter::default(),
            first.next.clone(),
            4,
        ));
        assert_eq!(ids(&second), ["t5", "t4", "t3", "t2"]);
        let third = run(&TaskQuery::new(
            TaskFilter::default(),
            second.next.clone(),
            4,
        ));
        assert_eq!(ids(&third), ["t1", "t0"]);
        assert_eq!(third.next, None);

        let mut narrow = TaskQuery::new(
            TaskFilter {
                statuses: vec![Status::Failed],
                ..Default::default()
            },
            None,
            10,
        );
        narrow.scan = 3;
        let short = run(&narrow);
        assert_eq!(ids(&short), ["t9", "t7"]);
        assert_eq!(short.next.as_ref().map(|c| c.id.as_str()), Some("t7"));

        let recent = run(&TaskQuery::new(
            TaskFilter {
                created_after_ms: Some(106),
                ..Default::default()
            },
            None,
            2,
        ));
        assert_eq!(ids(&recent), ["t9", "t8"]);
        let rest = run(&TaskQuery::new(
            TaskFilter {
                created_after_ms: Some(106),
                ..Default::default()
            },
            recent.next.clone(),
            2,
        ));
        assert_eq!(ids(&rest), ["t7"]);
        assert_eq!(rest.next, None, "the time bound ends the listing");
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(TaskQuery::new(TaskFilter::default(), None, 0).limit, 50);
        assert_eq!(
            TaskQuery::new(TaskFilter::default(), None, 5000).limit,
            1000
        );
    }

    #[test]
    fn idempotency_keys_are_checked() {
        assert_eq!(IdempotencyKey::parse(""), Ok(None));
        assert!(IdempotencyKey::parse("retry-1:2026.11").unwrap().is_some());
        assert!(matches!(
            IdempotencyKey::parse(&"k".repeat(129)),
            Err(IdempotencyKeyError::TooLong { .. })
        ));
        assert!(matches!(
            IdempotencyKey::parse("a/b"),
            Err(IdempotencyKeyError::BadCharacter { found: '/', .. })
        ));
    }
}
