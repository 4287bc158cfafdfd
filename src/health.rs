//! `/livez` and `/readyz` for orchestrators, from state the prober keeps fresh.
//!
//! - `/livez` answers 200 while the process serves. It never looks at Redis: an outage must
//!   not make Kubernetes restart healthy pods.
//! - `/readyz` answers 200 `ok` when every required pool is ready, else 503. It reads each
//!   pool's cached state, so a flood of probes sends nothing to Redis.
//!
//! Kubernetes conventions: `?verbose` lists each check (`[+]redis:cache ok`), `?exclude=NAME`
//! (repeatable) skips one, `/readyz/NAME` answers for one check. With
//! `Accept: application/health+json` the answer is in the IETF health-check draft format
//! (`pass`/`warn`/`fail` with `checks`). A pool added with [`Health::optional`] reports `warn`
//! when down and keeps readiness at 200, so an outage of a shared cache does not take every
//! pod out of the load balancer.
//!
//! Why a check fails is for operators: it is withheld (`[-]redis:cache failed: reason
//! withheld`, as Kubernetes words it) unless [`Health::show_details`] is on, and even then
//! it names no address. Serve health and metrics on a listener of their own, reachable only
//! from inside (see `examples/internal_listener.rs`), rather than merging them into the
//! public application.
//!
//! ```no_run
//! use axum::Router;
//! use redis_guard::{Health, RedisGuard};
//!
//! # fn demo(cache: RedisGuard, sessions: RedisGuard) {
//! let app: Router = Router::new().merge(Health::new().require(sessions).optional(cache).router());
//! # }
//! ```
//!
//! The service's other dependencies join the same `/readyz` with [`Health::check`]: any async
//! check, run in the background every interval and answered from its last result, like the
//! pools.

use std::fmt::Write as _;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::FutureExt;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};

use crate::breaker::BreakerState;
use crate::content_type::{self, HEALTH_JSON};
use crate::pool::RedisGuard;
use crate::sanitize::without_addresses;

/// The shortest interval a custom check runs at.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The checks behind `/readyz`, and the router serving `/livez` and `/readyz`.
///
/// Each Redis pool is a check named `redis:<pool name>`, read from the state its prober keeps
/// fresh; [`Health::check`] adds any other dependency (a database, a downstream API). A
/// required check failing makes `/readyz` answer 503; an optional one reports `warn` and keeps
/// it at 200. See the `/readyz` conventions in the [module docs](crate::Health#endpoints).
///
/// # Endpoints
///
/// - `/livez`: 200 while the process serves; never looks at a dependency.
/// - `/readyz`: 200 `ok` when every required check passes, else 503; `?verbose` lists each
///   check, `?exclude=NAME` skips one, `/readyz/NAME` answers for one, and
///   `Accept: application/health+json` gives the IETF health-check format.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_guard::{Health, RedisGuard};
///
/// # fn demo(cache: RedisGuard, sessions: RedisGuard) {
/// let health = Health::new()
///     .require(sessions)
///     .optional(cache)
///     .check("postgres", Duration::from_secs(2), || async {
///         // e.g. `SELECT 1` on the service's database pool
///         Ok::<(), String>(())
///     });
/// let app: axum::Router = axum::Router::new().merge(health.router());
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Health {
    checks: Vec<Check>,
    /// Whether answers say why a check fails; see [`Health::show_details`].
    show_details: bool,
}

#[derive(Debug, Clone)]
struct Check {
    /// `redis:<pool name>`, or the name given to [`Health::check`].
    name: String,
    source: Source,
    optional: bool,
}

#[derive(Debug, Clone)]
enum Source {
    Pool(RedisGuard),
    Custom(Arc<CustomCheck>),
}

/// The future a custom check returns.
type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A check of the application's, run in the background; readiness reads its last result.
struct CustomCheck {
    run: Box<dyn Fn() -> CheckFuture + Send + Sync>,
    every: Duration,
    /// `None` until the first run ends.
    last: Mutex<Option<Result<(), String>>>,
    started: AtomicBool,
}

impl std::fmt::Debug for CustomCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomCheck")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl CustomCheck {
    fn result(&self) -> Option<Result<(), String>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts the background runs, once, if a Tokio runtime is there to run them.
    fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.started.swap(true, Ordering::Relaxed) {
            runtime.spawn(run_custom(Arc::downgrade(self)));
        }
    }
}

/// Runs a custom check every interval (bounded by the interval) until its router is dropped.
async fn run_custom(check: Weak<CustomCheck>) {
    loop {
        let Some(strong) = check.upgrade() else {
            return;
        };
        let every = strong.every;
        // A panicking check is a failing one, and runs again: the task must outlive it.
        let run = AssertUnwindSafe((strong.run)()).catch_unwind();
        let result = match tokio::time::timeout(every, run).await {
            Ok(Ok(result)) => result,
            Ok(Err(_panic)) => Err("the check panicked".to_owned()),
            Err(_) => Err(format!("no answer within {every:?}")),
        };
        *strong.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        drop(strong);
        tokio::time::sleep(every).await;
    }
}

/// One check's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

impl Check {
    fn status(&self) -> CheckStatus {
        let passing = match &self.source {
            Source::Pool(guard) => guard.is_ready(),
            Source::Custom(check) => {
                check.start();
                matches!(check.result(), Some(Ok(())))
            }
        };
        match (passing, self.optional) {
            (true, _) => CheckStatus::Pass,
            (false, true) => CheckStatus::Warn,
            (false, false) => CheckStatus::Fail,
        }
    }

    /// The check's entry in `application/health+json`: its status only, unless `details`.
    fn json(&self, status: CheckStatus, details: bool) -> serde_json::Value {
        if !details {
            return serde_json::json!([{ "status": status_label(status) }]);
        }
        let mut entry = match &self.source {
            Source::Pool(guard) => serde_json::json!({
                "componentType": "datastore",
                "observedValue": guard.breaker_state().as_label(),
            }),
            Source::Custom(_) => serde_json::json!({ "componentType": "component" }),
        };
        entry["status"] = status_label(status).into();
        if status != CheckStatus::Pass {
            entry["output"] = self.output().into();
        }
        serde_json::json!([entry])
    }

    /// Why it is not passing, for operators: one bounded line without addresses (connect
    /// errors come from the pool's own sockets and handshakes, which hold no credentials, but
    /// name hosts and carry the server's words; a custom check's error is the application's
    /// own text, and goes through the same filter).
    fn output(&self) -> String {
        without_addresses(&self.cause())
    }

    fn cause(&self) -> String {
        let guard = match &self.source {
            Source::Pool(guard) => guard,
            Source::Custom(check) => {
                return match check.result() {
                    None => "not checked yet".into(),
                    Some(Ok(())) => "ok".into(),
                    Some(Err(e)) => e,
                };
            }
        };
        let core = guard.core();
        let state = match guard.breaker_state() {
            BreakerState::Closed if core.is_busy() => {
                return "busy: Redis is running a script and refuses commands (BUSY)".into();
            }
            BreakerState::Closed if core.has_connected() => return "ok".into(),
            BreakerState::Closed if core.connects_failing() => "unreachable: cannot connect",
            BreakerState::Closed => "connecting",
            BreakerState::HalfOpen => "recovering: circuit breaker half-open",
            BreakerState::Open => "unreachable: circuit breaker open",
        };
        match core.last_connect_error() {
            Some(cause) => format!("{state}; last connect error: {cause}"),
            None => state.into(),
        }
    }
}

impl Health {
    /// No checks yet: `/readyz` passes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether answers say why a check fails (off unless set): the reason in `?verbose`, in
    /// `/readyz/{check}` and in `application/health+json` (with the breaker's state). Off,
    /// they give each check's name and status only, and a failing one reads
    /// `[-]NAME failed: reason withheld`.
    ///
    /// Turn it on only where the answers stay inside: on a listener of its own for operators
    /// and the orchestrator, not on the port the public reaches. Even on, the reason is one
    /// line of bounded length with every IP address, host name and `host:port` replaced by
    /// `<address>`; keep secrets out of a [`Health::check`]'s error text all the same.
    ///
    /// ```no_run
    /// use redis_guard::{Health, RedisGuard};
    ///
    /// # async fn demo(guard: RedisGuard) -> std::io::Result<()> {
    /// // Served on 127.0.0.1 only: the details stay on the host (or the pod).
    /// let internal: axum::Router = Health::new().require(guard).show_details(true).router();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
    /// axum::serve(listener, internal).await
    /// # }
    /// ```
    pub fn show_details(mut self, show: bool) -> Self {
        self.show_details = show;
        self
    }

    /// Adds a pool readiness depends on, as check `redis:<pool name>`.
    pub fn require(self, guard: RedisGuard) -> Self {
        self.add(guard, false)
    }

    /// Adds a pool whose outage reports `warn` but keeps readiness at 200.
    pub fn optional(self, guard: RedisGuard) -> Self {
        self.add(guard, true)
    }

    fn add(mut self, guard: RedisGuard, optional: bool) -> Self {
        self.checks.push(Check {
            name: format!("redis:{}", guard.name()),
            source: Source::Pool(guard),
            optional,
        });
        self
    }

    /// Adds a check readiness depends on: `check` runs in the background every `every` (and
    /// must answer within it), and `/readyz` answers from its last result, so probes never
    /// wait on it and a flood of them never reaches the dependency. Until its first run ends
    /// it counts as failing. Its error text is shown by `?verbose` and `health+json` when
    /// [`Health::show_details`] is on: keep secrets out of it.
    pub fn check<F, Fut>(self, name: impl Into<String>, every: Duration, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.add_custom(name.into(), every, check, false)
    }

    /// [`Health::check`] for a dependency whose failure reports `warn` but keeps readiness
    /// at 200.
    pub fn optional_check<F, Fut>(self, name: impl Into<String>, every: Duration, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.add_custom(name.into(), every, check, true)
    }

    fn add_custom<F, Fut>(mut self, name: String, every: Duration, check: F, optional: bool) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let run: Box<dyn Fn() -> CheckFuture + Send + Sync> =
            Box::new(move || Box::pin(check()) as CheckFuture);
        self.checks.push(Check {
            name,
            source: Source::Custom(Arc::new(CustomCheck {
                run,
                every: every.max(MIN_CHECK_INTERVAL),
                last: Mutex::new(None),
                started: AtomicBool::new(false),
            })),
            optional,
        });
        self
    }

    /// `GET /livez`, `GET /readyz` and `GET /readyz/{check}`; merge it into the application's
    /// router, outside any layer that needs Redis.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        for check in &self.checks {
            if let Source::Custom(check) = &check.source {
                check.start();
            }
        }
        Router::new()
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/readyz/{check}", get(readyz_one))
            .with_state(Arc::new(self))
    }
}

/// The parsed query: `verbose` and `exclude=` as Kubernetes' health endpoints take them.
struct Options {
    verbose: bool,
    exclude: Vec<String>,
}

impl Options {
    fn parse(query: Option<&str>) -> Self {
        let mut options = Options {
            verbose: false,
            exclude: Vec::new(),
        };
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "verbose" => options.verbose = value != "false",
                "exclude" => options.exclude.push(value.into_owned()),
                _ => {}
            }
        }
        options
    }
}

/// Whether the client asked for `application/health+json`: a media range of that type
/// (case-insensitive) whose quality is not 0, in any `Accept` header.
fn wants_health_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media_type = parts.next().unwrap_or("");
            let quality = parts
                .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            media_type.eq_ignore_ascii_case(HEALTH_JSON) && quality > 0.0
        })
}

/// The words for a check that is not passing: its cause when details are shown, else none.
fn reason(check: &Check, details: bool) -> String {
    match details {
        true => check.output(),
        false => "reason withheld".to_owned(),
    }
}

/// A plain-text health answer.
fn text(status: StatusCode, body: impl Into<String>) -> Response {
    content_type::typed(
        (status, body.into()).into_response(),
        content_type::TEXT_PLAIN,
    )
}

async fn livez(RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    if wants_health_json(&headers) {
        return health_json(StatusCode::OK, serde_json::json!({ "status": "pass" }));
    }
    let body = if Options::parse(query.as_deref()).verbose {
        "[+]ping ok\nlivez check passed\n"
    } else {
        "ok"
    };
    text(StatusCode::OK, body)
}

async fn readyz(
    State(health): State<Arc<Health>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let options = Options::parse(query.as_deref());
    let checks: Vec<(&Check, CheckStatus)> = health
        .checks
        .iter()
        .filter(|c| !options.exclude.contains(&c.name))
        .map(|c| (c, c.status()))
        .collect();
    let failed = checks.iter().any(|(_, v)| *v == CheckStatus::Fail);
    let status = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };

    if wants_health_json(&headers) {
        let overall = if failed {
            "fail"
        } else if checks.iter().any(|(_, v)| *v == CheckStatus::Warn) {
            "warn"
        } else {
            "pass"
        };
        let mut details = serde_json::Map::new();
        for (check, verdict) in &checks {
            details.insert(
                check.name.clone(),
                check.json(*verdict, health.show_details),
            );
        }
        return health_json(
            status,
            serde_json::json!({ "status": overall, "checks": details }),
        );
    }

    if !options.verbose {
        let body = if failed { "readyz check failed" } else { "ok" };
        return text(status, body);
    }
    let mut body = String::new();
    for (check, verdict) in &checks {
        let _ = match verdict {
            CheckStatus::Pass => writeln!(body, "[+]{} ok", check.name),
            CheckStatus::Warn => writeln!(
                body,
                "[+]{} warn: {} (optional)",
                check.name,
                reason(check, health.show_details)
            ),
            CheckStatus::Fail => writeln!(
                body,
                "[-]{} failed: {}",
                check.name,
                reason(check, health.show_details)
            ),
        };
    }
    // Only names of real checks are repeated: the query is the client's text.
    let mut unmatched = 0;
    for excluded in &options.exclude {
        match health.checks.iter().find(|c| &c.name == excluded) {
            Some(check) => {
                let _ = writeln!(body, "[+]{} excluded: ok", check.name);
            }
            None => unmatched += 1,
        }
    }
    if unmatched > 0 {
        let _ = writeln!(
            body,
            "warn: some health checks cannot be excluded: no matches for {unmatched} name(s)"
        );
    }
    body.push_str(if failed {
        "readyz check failed\n"
    } else {
        "readyz check passed\n"
    });
    text(status, body)
}

async fn readyz_one(
    State(health): State<Arc<Health>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(check) = health.checks.iter().find(|c| c.name == name) else {
        return text(StatusCode::NOT_FOUND, "no such check");
    };
    let verdict = check.status();
    let status = if verdict == CheckStatus::Fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    if wants_health_json(&headers) {
        return health_json(
            status,
            serde_json::json!({
                "status": status_label(verdict),
                "checks": { check.name.clone(): check.json(verdict, health.show_details) },
            }),
        );
    }
    match verdict {
        CheckStatus::Fail if health.show_details => text(
            status,
            format!("[-]{} failed: {}", check.name, check.output()),
        ),
        CheckStatus::Fail => text(status, format!("[-]{} failed", check.name)),
        _ => text(status, "ok"),
    }
}

fn status_label(verdict: CheckStatus) -> &'static str {
    match verdict {
        CheckStatus::Pass => "pass",
        CheckStatus::Warn => "warn",
        CheckStatus::Fail => "fail",
    }
}

fn health_json(status: StatusCode, body: serde_json::Value) -> Response {
    content_type::typed(
        (status, body.to_string()).into_response(),
        content_type::HEALTH_JSON,
    )
}
