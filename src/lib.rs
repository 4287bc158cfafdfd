//! # redis-guard
//!
//! Keeps an axum or Tower service talking to Redis through network faults.
//!
//! Pooled Redis sockets die in ways a client does not notice: a firewall or NAT forgets an idle
//! flow, a managed Redis resets connections, a server restarts. redis-guard wraps a
//! [bb8](https://docs.rs/bb8) pool of redis-rs connections so that a handler never receives a
//! dead one:
//!
//! - **Zero-round-trip health.** The pool owns each socket and notices EOF and resets as they
//!   happen, so a connection killed while idle is evicted before anyone checks it out.
//! - **Validation on checkout.** A connection that has not completed a command recently is
//!   PINGed (with a short timeout) before it is handed out; a recently used one is not, so a
//!   busy pool pays nothing.
//! - **Replacement within one budget.** A dead connection is evicted and another one found
//!   within [`Config::checkout_timeout`]; the caller only sees an error when none can be had,
//!   and that error names the pool's state and the last connect error.
//! - **Hygiene.** Explicit connect and response timeouts, TCP keepalive and
//!   `TCP_USER_TIMEOUT` per socket, jittered lifetimes, and connections carrying session state
//!   (`MULTI`, `SELECT`, ...) never reused.
//! - **A circuit breaker that judges Redis**, not one socket and not load: only failed new
//!   connections count ([`BreakerPolicy`] has the rule); one paced connect attempt at a time
//!   while Redis is down; readiness kept fresh by a background prober.
//! - **Commands as users send them**: a cancelled call never leaves its reply (or a blocked
//!   `BLPOP`) for the next user, blocking commands wait their own timeout, session state is
//!   tracked in command order, reads that failed with their socket are retried, and a failover
//!   (`READONLY`) moves every connection to the new primary.
//! - **TLS** (`rediss://`, feature `tls`) over the same owned socket, and **Sentinel**
//!   (`redis+sentinel://`): the primary followed within milliseconds of a failover.
//! - **A real service's needs**: several pools chosen by type ([`RedisFrom`]), late checkout
//!   for handlers that read bodies, `Option<Redis>`, health-checked pub/sub
//!   ([`RedisGuard::subscribe`]), graceful [`close`](RedisGuard::close), readiness checks of
//!   other dependencies ([`Health::check`]), a span per command.
//! - **Metrics** through the [`metrics`](https://docs.rs/metrics) facade ([`mod@metrics`]), and
//!   a `/metrics` route with the `prometheus` feature.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use redis::AsyncCommands;
//! use redis_guard::{Config, Redis, RedisGuard, RedisGuardLayer};
//!
//! async fn visits(mut redis: Redis) -> Result<String, redis_guard::Error> {
//!     let n: i64 = redis.incr("visits", 1).await?;
//!     Ok(n.to_string())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = Config::builder("redis://127.0.0.1:6379").name("cache").build()?;
//!     let guard = RedisGuard::connect(config).await?;
//!     let app = Router::new()
//!         .route("/visits", get(visits))
//!         .layer(RedisGuardLayer::new(guard));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! ## Modules
//!
//! The API is at the crate root. Beside it:
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`Config`], its builder, defaults with their reasons, environment variables, URLs |
//! | [`mod@metrics`] | the metric contract: every series' name and labels |
//! | [`mod@pubsub`] | [`Subscriber`]: subscriptions that PING, reconnect, resubscribe and report gaps |
//! | `prometheus` | (feature `prometheus`) the `/metrics` route; buckets for your own `PrometheusBuilder` |
//! | `testkit` | (feature `testkit`) a real `redis-server`, a Sentinel deployment and a fault-injecting proxy |
//!
//! Where the internals live is in `ARCHITECTURE.md` at the repository's root.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations)]

// The layers, lowest first: a module uses its own layer and those before it (see
// ARCHITECTURE.md; tests/layering.rs keeps it so).

// base: values and rules that know no socket.
mod breaker;
mod cause;
mod clock;
mod command;
pub mod config;
mod content_type;
mod delegate;
mod error;
pub mod metrics;
mod names;
mod not_sent;
mod redis_error;
mod refusals;
mod reply_limit;
mod reply_times;
mod sanitize;
mod session;
mod throttle;
#[cfg(feature = "tls")]
mod tls;

// net, topology, conn: one socket, where Redis is, one connection.
mod connection;
mod sentinel;
mod transport;

// pool: the connect gate, checkout, shared mode, the prober, the pool's state.
mod hedge;
mod inner;
mod manager;
mod multiplexed;
mod pool;
mod pool_core;
mod prober;
pub mod pubsub;
mod validate;

// http: Tower and axum.
mod extract;
mod health;
mod layer;
#[cfg(feature = "prometheus")]
pub mod prometheus;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use breaker::{BreakerPolicy, BreakerState};
#[doc(inline)]
pub use config::{Config, ConfigBuilder, ConfigError, PoolMode, StartupMode};
pub use connection::GuardConnection;
pub use error::{Error, PoolState, UnavailableReason};
pub use extract::{Redis, RedisFrom, RedisRejection};
pub use health::Health;
pub use layer::{
    RedisGuardLayer, RedisGuardService, RequireRedisFuture, RequireRedisLayer, RequireRedisService,
};
pub use pool::{Checkout, Idempotent, PooledConnection, RedisGuard};
pub use pubsub::{Gap, PubSubEvent, Subscriber, Subscription};
/// The redis-rs version redis-guard is built on, for `AsyncCommands` and friends.
pub use redis;

/// The README's quick start and recipes, compiled with the doc tests so they cannot drift from
/// the API (`scripts/check-quickstart.sh` also builds the quick start as a project of its own).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
