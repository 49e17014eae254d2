//! The live dashboard: a page served by every coordinator on its
//! `--metrics-listen` port at `/`, showing the cluster, its tasks and one
//! task's DAG as a graph, kept current by polling small JSON endpoints.
//!
//! ```text
//! GET /                  the page (HTML; no data in it)
//! GET /dashboard.js      its script, /dashboard.css its style
//! GET /api/cluster       agents, roles, leader, term, load, breaker, reputation
//! GET /api/tasks         one page of tasks, newest first (filters: status,
//!                        pattern, name_prefix; page_token)
//! GET /api/tasks/{id}    one task with its DAG laid out (layout.rs);
//!                        ?revision=N answers `{"unchanged":true}` while the
//!                        record is still at revision N
//! ```
//!
//! Nothing here keeps state of its own: agents come from the registry and
//! the local coordinator, exactly as `ClusterService.ListAgents` answers
//! ([`crate::api::cluster::agents`]); tasks from `TaskService.List`'s store
//! path and `Get`'s ([`TaskApi::list`], [`TaskApi::get`]), with `List`'s
//! own request parsing; the term from this process's metrics.
//!
//! Every asset is compiled into the binary (`include_str!`): the page needs
//! no network beyond the node. Everything a client put in a task (names,
//! inputs, outputs, errors) reaches the page as JSON strings, which the
//! script only ever sets as text (`textContent`, SVG attributes), never as
//! markup; the page also forbids inline and foreign scripts with a
//! `Content-Security-Policy`.
//!
//! Access: the port is unauthenticated, but task outputs are not counters.
//! When the node has client tokens (`--token-file`) the data endpoints
//! (`/api/…`) take the same `Authorization: Bearer` token as the gRPC API,
//! checked by the same [`Authenticator`]: a `read` or `admin` token sees
//! everything, a `submit` token only the tasks it owns (as `task list`).
//! The page and its assets are open, so the page can ask for the token.
//! With `--insecure` (no tokens) everything is open.
//!
//! Bounds, so that neither a polling page nor a hostile task costs much:
//! a task page holds at most [`PAGE_SIZE`] tasks; a DAG at most
//! [`MAX_DAG_NODES`] subtasks (the rest are counted, not drawn); every
//! input, output, error and consensus is cut to [`PREVIEW_CHARS`]
//! characters and every name to [`NAME_CHARS`]; the agent list to
//! [`MAX_AGENTS`]. The HTTP server itself bounds connections and time
//! ([`crate::metrics::serve`]).

pub mod layout;
mod view;

use std::sync::{Arc, OnceLock};

use agentmesh_core::TaskId;
use agentmesh_core::access::Action;
use agentmesh_proto::v1 as pb;
use agentmesh_registry::Registry;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue,
};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::actors::coordinator::CoordinatorHandle;
use crate::api::auth::{Authenticator, Caller};
use crate::api::error::ApiError;
use crate::api::task::{TaskApi, list_query};

/// Tasks in one page of the list.
pub const PAGE_SIZE: u32 = 50;
/// Subtasks drawn in one DAG; a task with more shows these and a count of
/// the rest (the task limits allow 1024).
pub const MAX_DAG_NODES: usize = 200;
/// Characters kept of each input, output, error and consensus (as JSON
/// text); the rest is cut and marked with `…`.
pub const PREVIEW_CHARS: usize = 512;
/// Characters kept of each name, id and capability.
pub const NAME_CHARS: usize = 200;
/// Agents listed at most.
pub const MAX_AGENTS: usize = 500;

/// Paths of the dashboard: the page and its assets.
pub const PAGE_PATH: &str = "/";
const SCRIPT_PATH: &str = "/dashboard.js";
const STYLE_PATH: &str = "/dashboard.css";
/// Prefix of the JSON endpoints.
pub const API_PREFIX: &str = "/api/";

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// The service name refusals are counted under in
/// `agentmesh_requests_refused_total`.
const SERVICE: &str = "dashboard";

/// Whether `path` is one the dashboard answers (on a coordinator) or
/// explains it does not (elsewhere).
pub fn is_dashboard_path(path: &str) -> bool {
    matches!(path, PAGE_PATH | SCRIPT_PATH | STYLE_PATH) || path.starts_with(API_PREFIX)
}

/// What the metrics port needs to serve the dashboard, set once the
/// node's coordinator and services exist; empty on nodes without a
/// coordinator, which answer with a pointer to the coordinators.
#[derive(Clone)]
pub struct Slot {
    serves: bool,
    dashboard: Arc<OnceLock<Dashboard>>,
}

impl Slot {
    /// A slot for a node that runs a coordinator (`serves`) or not.
    pub fn new(serves: bool) -> Self {
        Self {
            serves,
            dashboard: Arc::default(),
        }
    }

    /// Starts serving `dashboard`; a second call is ignored.
    pub fn set(&self, dashboard: Dashboard) {
        let _ = self.dashboard.set(dashboard);
    }

    /// The answer to a GET of a dashboard path (see [`is_dashboard_path`]).
    pub async fn respond(
        &self,
        path: &str,
        query: &str,
        headers: &HeaderMap,
    ) -> Response<Full<Bytes>> {
        match (self.dashboard.get(), self.serves) {
            (Some(dashboard), _) => dashboard.respond(path, query, headers).await,
            (None, true) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the dashboard is starting: the node's coordinator is not up yet\n",
            ),
            (None, false) => plain(
                StatusCode::NOT_FOUND,
                "no dashboard here: the dashboard is served by coordinators, on their \
                 --metrics-listen port; this node serves /metrics, /livez and /readyz\n",
            ),
        }
    }
}

/// The dashboard of one coordinator.
pub struct Dashboard {
    tasks: TaskApi,
    registry: Arc<dyn Registry>,
    coordinator: CoordinatorHandle,
    auth: Authenticator,
}

impl Dashboard {
    /// `auth` is the node's client authenticator (tokens or open).
    pub fn new(
        tasks: TaskApi,
        registry: Arc<dyn Registry>,
        coordinator: CoordinatorHandle,
        auth: Authenticator,
    ) -> Self {
        Self {
            tasks,
            registry,
            coordinator,
            auth: auth.for_service(SERVICE),
        }
    }

    async fn respond(&self, path: &str, query: &str, headers: &HeaderMap) -> Response<Full<Bytes>> {
        match path {
            PAGE_PATH => asset(PAGE, "text/html; charset=utf-8"),
            SCRIPT_PATH => asset(SCRIPT, "text/javascript; charset=utf-8"),
            STYLE_PATH => asset(STYLE, "text/css; charset=utf-8"),
            _ => {
                let Some(route) = Route::parse(path) else {
                    return plain(
                        StatusCode::NOT_FOUND,
                        "not found: the dashboard's data is at /api/cluster, /api/tasks and \
                         /api/tasks/{id}\n",
                    );
                };
                match self.api(route, query, headers).await {
                    Ok(body) => json(StatusCode::OK, body),
                    Err(error) => refusal(error),
                }
            }
        }
    }

    /// The JSON answer of one API call.
    async fn api(
        &self,
        route: Route,
        query: &str,
        headers: &HeaderMap,
    ) -> Result<Vec<u8>, ApiError> {
        let caller = self.caller(headers)?;
        match route {
            Route::Cluster => {
                caller.authorize(Action::ListAgents)?;
                to_json(&self.cluster().await)
            }
            Route::Tasks => to_json(&self.list(&caller, query).await?),
            Route::Task(id) => {
                let record = self.tasks.get(&id).await?;
                caller.authorize(Action::Read {
                    owner: record.owner.as_ref(),
                })?;
                let known = param(query, "revision").and_then(|r| r.parse::<u64>().ok());
                if known == Some(record.revision) {
                    return to_json(&view::Unchanged::new(record.revision));
                }
                to_json(&view::task(&record))
            }
        }
    }

    /// Who asks, by the `Authorization` header, checked exactly as a gRPC
    /// call's metadata is.
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let mut request = tonic::Request::new(());
        if let Some(value) = headers.get(AUTHORIZATION)
            && let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(value.as_bytes())
        {
            request
                .metadata_mut()
                .insert(crate::api::auth::AUTHORIZATION, value);
        }
        Ok(self.auth.authenticate(&request)?)
    }

    async fn cluster(&self) -> view::Cluster {
        let agents =
            crate::api::cluster::agents(self.registry.as_ref(), Some(&self.coordinator.actor))
                .await;
        let leading = *self.coordinator.leading.borrow();
        view::Cluster::new(
            &self.coordinator.id,
            leading,
            self.registry.leader().borrow().as_ref(),
            leading.then(term).flatten(),
            self.auth.is_on(),
            agents,
        )
    }

    /// One page of tasks, parsed as `TaskService.List` parses its request
    /// and restricted to the caller's own for a submit token.
    async fn list(&self, caller: &Caller, query: &str) -> Result<view::TaskList, ApiError> {
        let mut request = pb::ListTasksRequest {
            page_size: PAGE_SIZE,
            ..Default::default()
        };
        for status in param(query, "status").iter().flat_map(|s| s.split(',')) {
            let status = match status {
                "" => continue,
                "pending" => pb::TaskStatus::Pending,
                "running" => pb::TaskStatus::Running,
                "completed" => pb::TaskStatus::Completed,
                "failed" => pb::TaskStatus::Failed,
                "cancelled" => pb::TaskStatus::Cancelled,
                other => {
                    return Err(ApiError::InvalidArgument(format!(
                        "status '{}' is not a task status",
                        clip(other, 32)
                    )));
                }
            };
            request.status.push(status.into());
        }
        request.pattern = param(query, "pattern").unwrap_or_default();
        request.name_prefix = param(query, "name_prefix").unwrap_or_default();
        request.page_token = param(query, "page_token").unwrap_or_default();
        let mut query = list_query(&request)?;
        query.filter.owner = caller.list_owner(query.filter.owner.take())?;
        let page = self.tasks.list(&query).await?;
        Ok(view::TaskList::new(&page))
    }
}

/// The term this process's coordinator leads in, as it publishes it in
/// `agentmesh_coordinator_term` (read from the metrics, not kept twice).
fn term() -> Option<i64> {
    let text = crate::metrics::global().encode(crate::metrics::Format::Prometheus);
    text.lines()
        .find_map(|line| line.strip_prefix("agentmesh_coordinator_term "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as i64)
        .filter(|&term| term > 0)
}

/// A JSON endpoint.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Cluster,
    Tasks,
    Task(TaskId),
}

impl Route {
    /// The endpoint at `path`, `None` for none.
    fn parse(path: &str) -> Option<Self> {
        match path.strip_prefix(API_PREFIX)? {
            "cluster" => Some(Self::Cluster),
            "tasks" => Some(Self::Tasks),
            rest => {
                let id = rest.strip_prefix("tasks/")?;
                (!id.is_empty() && !id.contains('/')).then(|| Self::Task(TaskId::new(decode(id))))
            }
        }
    }
}

/// The percent-decoded value of `name` in a query string (`+` is a
/// space), or `None` when it is absent.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| decode(value))
    })
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// `text` cut to `max` characters, marked with `…` when cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Coordinator(format!("encoding JSON: {e}")))
}

/// A refused or failed API call as JSON: `{"error": "..."}` with the HTTP
/// status of its gRPC code (the one mapping in `api/error.rs`).
fn refusal(error: ApiError) -> Response<Full<Bytes>> {
    let status = tonic::Status::from(error);
    let code = match status.code() {
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({ "error": clip(status.message(), PREVIEW_CHARS) });
    json(code, body.to_string().into_bytes())
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Task outputs: never kept by a browser or proxy.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    harden(headers);
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    harden(headers);
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Headers that keep the page's own origin the only source of script,
/// style and data, and keep it out of frames: should a string ever slip
/// through as markup, it could run nothing.
fn harden(headers: &mut HeaderMap) {
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_percent_decoded() {
        let query = "status=running,failed&name_prefix=a%20b%3Cx%3E+c&empty=&flag";
        assert_eq!(param(query, "status").as_deref(), Some("running,failed"));
        assert_eq!(param(query, "name_prefix").as_deref(), Some("a b<x> c"));
        assert_eq!(param(query, "empty").as_deref(), Some(""));
        assert_eq!(param(query, "flag").as_deref(), Some(""));
        assert_eq!(param(query, "missing"), None);
    }

    #[test]
    fn clipping_counts_characters_and_marks_the_cut() {
        assert_eq!(clip("héllo", 10), "héllo");
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn only_the_dashboards_paths_are_routed_to_it() {
        for path in [
            "/",
            "/dashboard.js",
            "/dashboard.css",
            "/api/tasks",
            "/api/x",
        ] {
            assert!(is_dashboard_path(path), "{path}");
        }
        for path in ["/metrics", "/livez", "/index.html", "/apix"] {
            assert!(!is_dashboard_path(path), "{path}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script() {
        for asset in [PAGE, SCRIPT, STYLE] {
            // The SVG namespace is a name, not a fetch.
            let asset = asset.replace("http://www.w3.org/2000/svg", "");
            assert!(!asset.contains("http://") && !asset.contains("https://"));
            assert!(!asset.contains("//cdn") && !asset.contains("@import"));
        }
        assert!(PAGE.contains("<script src=\"/dashboard.js\""));
        assert_eq!(PAGE.matches("<script").count(), 1, "one script, by src");
        // Client strings only ever become text.
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
        assert!(!SCRIPT.contains("eval(") && !SCRIPT.contains("document.write"));
    }

    #[test]
    fn api_paths_name_an_endpoint_or_nothing() {
        assert_eq!(Route::parse("/api/cluster"), Some(Route::Cluster));
        assert_eq!(Route::parse("/api/tasks"), Some(Route::Tasks));
        assert_eq!(
            Route::parse("/api/tasks/a%2Fb%20c"),
            Some(Route::Task(TaskId::new("a/b c")))
        );
        for path in ["/api/tasks/", "/api/tasks/a/b", "/api/other", "/api/"] {
            assert_eq!(Route::parse(path), None, "{path}");
        }
    }

    #[tokio::test]
    async fn a_node_without_a_coordinator_points_to_the_coordinators() {
        let slot = Slot::new(false);
        let response = slot.respond("/", "", &HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let starting = Slot::new(true)
            .respond("/api/tasks", "", &HeaderMap::new())
            .await;
        assert_eq!(starting.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
