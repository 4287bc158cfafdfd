//! A ready `/metrics` route (feature `prometheus`), backed by metrics-exporter-prometheus.
//!
//! ```no_run
//! use axum::Router;
//! use redis_guard::prometheus::PrometheusMetrics;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Before RedisGuard::connect, so the pool registers its series with this recorder.
//! let metrics = PrometheusMetrics::install()?;
//! let app: Router = Router::new().merge(metrics.router());
//! # Ok(()) }
//! ```
//!
//! An application that builds its own `PrometheusBuilder` gives it redis-guard's histogram
//! buckets with [`PrometheusMetrics::configure`], installs it as it likes, and serves
//! `/metrics` from its handle with [`PrometheusMetrics::from_handle`]. Pools created before the
//! recorder register their series once it is installed.
//!
//! ```no_run
//! use redis_guard::prometheus::{PrometheusBuilder, PrometheusMetrics};
//!
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let builder = PrometheusMetrics::configure(PrometheusBuilder::new())?;
//! let handle = builder.install_recorder()?;
//! let app: axum::Router = PrometheusMetrics::from_handle(handle).router();
//! # Ok(()) }
//! ```
//!
//! An application with another recorder (an OpenTelemetry bridge) keeps it: redis-guard's
//! series go there; configure its histograms with
//! [`CHECKOUT_DURATION_BUCKETS`] and [`CONNECTION_HOLD_BUCKETS`].

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::Matcher;
/// The exporter's builder and handle, re-exported so that yours match the version
/// redis-guard is built with.
pub use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::metrics::{
    CHECKOUT_DURATION_BUCKETS, CHECKOUT_DURATION_SECONDS, CONNECTION_HOLD_BUCKETS,
    CONNECTION_HOLD_SECONDS,
};

/// How often histogram upkeep runs; the exporter's own default.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();
/// Serialises installation: two callers racing must both get the one recorder.
static INSTALLING: Mutex<()> = Mutex::new(());

/// Why the Prometheus recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// Another metrics recorder is installed; it receives redis-guard's series. Serve
    /// `/metrics` from it ([`PrometheusMetrics::from_handle`] for a Prometheus one).
    #[error(
        "a metrics recorder is already installed; it receives redis-guard's series, serve /metrics from it"
    )]
    RecorderAlreadySet,
    /// The exporter rejected its configuration.
    #[error("prometheus exporter: {0}")]
    Build(String),
}

/// The installed Prometheus recorder: render it, or serve it at `/metrics`.
#[derive(Debug, Clone)]
pub struct PrometheusMetrics {
    handle: PrometheusHandle,
}

impl PrometheusMetrics {
    /// Installs the Prometheus recorder as the global `metrics` recorder, with real histogram
    /// buckets for checkout latency, and starts its upkeep on the current Tokio runtime.
    /// Calling it again returns the same recorder.
    pub fn install() -> Result<PrometheusMetrics, InstallError> {
        let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = INSTALLED.get() {
            return Ok(PrometheusMetrics {
                handle: handle.clone(),
            });
        }
        let recorder = Self::configure(PrometheusBuilder::new())?.build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|_| InstallError::RecorderAlreadySet)?;
        let handle = INSTALLED.get_or_init(|| handle).clone();
        Ok(Self::from_handle(handle))
    }

    /// Gives `builder` the buckets of redis-guard's histograms, so that they render as
    /// histograms (the dashboard's `_bucket` queries) rather than summaries.
    pub fn configure(builder: PrometheusBuilder) -> Result<PrometheusBuilder, InstallError> {
        [
            (CHECKOUT_DURATION_SECONDS, CHECKOUT_DURATION_BUCKETS),
            (CONNECTION_HOLD_SECONDS, CONNECTION_HOLD_BUCKETS),
        ]
        .into_iter()
        .try_fold(builder, |builder, (name, buckets)| {
            builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                .map_err(|e| InstallError::Build(e.to_string()))
        })
    }

    /// Serves a recorder the application installed itself (see [`PrometheusMetrics::configure`]),
    /// and runs its histogram upkeep on the current Tokio runtime, if any.
    pub fn from_handle(handle: PrometheusHandle) -> PrometheusMetrics {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let upkeep = handle.clone();
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
        }
        PrometheusMetrics { handle }
    }

    /// The current metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// A router serving `GET /metrics`; merge it into the application's.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let handle = self.handle.clone();
        Router::new().route(
            "/metrics",
            get(move || {
                let body = handle.render();
                async move {
                    crate::content_type::typed(
                        body.into_response(),
                        crate::content_type::PROMETHEUS_TEXT,
                    )
                }
            }),
        )
    }
}
