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
//! ```no_run
//! use axum::Router;
//! use redis_guard::{Health, RedisGuard};
//!
//! # fn demo(cache: RedisGuard, sessions: RedisGuard) {
//! let app: Router = Router::new().merge(Health::new().require(sessions).optional(cache).router());
//! # }
//! ```

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::breaker::BreakerState;
use crate::pool::RedisGuard;

const HEALTH_JSON: &str = "application/health+json";

/// The checks behind `/readyz`, and the router serving `/livez` and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    checks: Vec<Check>,
}

#[derive(Debug, Clone)]
struct Check {
    /// `redis:<pool name>`.
    name: String,
    guard: RedisGuard,
    optional: bool,
}

/// One check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Check {
    fn verdict(&self) -> Verdict {
        match (self.guard.is_ready(), self.optional) {
            (true, _) => Verdict::Pass,
            (false, true) => Verdict::Warn,
            (false, false) => Verdict::Fail,
        }
    }

    /// The check's entry in `application/health+json`.
    fn json(&self, verdict: Verdict) -> serde_json::Value {
        let mut entry = serde_json::json!({
            "componentType": "datastore",
            "status": verdict_label(verdict),
            "observedValue": self.guard.breaker_state().as_label(),
        });
        if verdict != Verdict::Pass {
            entry["output"] = self.output().into();
        }
        serde_json::json!([entry])
    }

    /// Why it is not passing, in words safe to show anyone: no hosts, no credentials (connect
    /// errors come from the pool's own sockets and handshakes, which hold neither).
    fn output(&self) -> String {
        let shared = self.guard.shared();
        let state = match self.guard.breaker_state() {
            BreakerState::Closed if shared.has_connected() => return "ok".into(),
            BreakerState::Closed if shared.connects_failing() => "unreachable: cannot connect",
            BreakerState::Closed => "connecting",
            BreakerState::HalfOpen => "recovering: circuit breaker half-open",
            BreakerState::Open => "unreachable: circuit breaker open",
        };
        match shared.last_connect_error() {
            Some(cause) => format!("{state}; last connect error: {}", one_line(&cause)),
            None => state.into(),
        }
    }
}

impl Health {
    /// No checks yet: `/readyz` passes.
    pub fn new() -> Self {
        Self::default()
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
            guard,
            optional,
        });
        self
    }

    /// `GET /livez`, `GET /readyz` and `GET /readyz/{check}`; merge it into the application's
    /// router, outside any layer that needs Redis.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
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

/// Text on one line, for a line of `?verbose` output.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A plain-text health answer; `nosniff` so no browser takes it for anything else.
fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
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
    let checks: Vec<(&Check, Verdict)> = health
        .checks
        .iter()
        .filter(|c| !options.exclude.contains(&c.name))
        .map(|c| (c, c.verdict()))
        .collect();
    let failed = checks.iter().any(|(_, v)| *v == Verdict::Fail);
    let status = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };

    if wants_health_json(&headers) {
        let overall = if failed {
            "fail"
        } else if checks.iter().any(|(_, v)| *v == Verdict::Warn) {
            "warn"
        } else {
            "pass"
        };
        let mut details = serde_json::Map::new();
        for (check, verdict) in &checks {
            details.insert(check.name.clone(), check.json(*verdict));
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
            Verdict::Pass => writeln!(body, "[+]{} ok", check.name),
            Verdict::Warn => writeln!(
                body,
                "[+]{} warn: {} (optional)",
                check.name,
                check.output()
            ),
            Verdict::Fail => writeln!(body, "[-]{} failed: {}", check.name, check.output()),
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
    let verdict = check.verdict();
    let status = if verdict == Verdict::Fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    if wants_health_json(&headers) {
        return health_json(
            status,
            serde_json::json!({
                "status": verdict_label(verdict),
                "checks": { check.name.clone(): check.json(verdict) },
            }),
        );
    }
    match verdict {
        Verdict::Fail => text(status, check.output()),
        _ => text(status, "ok"),
    }
}

fn verdict_label(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "pass",
        Verdict::Warn => "warn",
        Verdict::Fail => "fail",
    }
}

fn health_json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = text(status, body.to_string());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(HEALTH_JSON));
    response
}
