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
//! ## Where things are
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`Config`], its builder and validation, defaults, environment, URLs and redaction |
//! | `pool` | [`RedisGuard`], [`PooledConnection`] and its [`Checkout`]: the public handle, and where each call goes |
//! | `inner` | the pool's machinery: bb8 and the budgeted checkout loop with validation |
//! | `multiplexed` | [`PoolMode::Shared`]: the shared connections, their health, picking and refilling |
//! | `manager` | `GuardManager`: the connect gate (one attempt at a time, paced), bb8's hooks |
//! | `transport` | the owned socket: options, address racing, EOF/reset tracking |
//! | `reply_limit` | `max_reply_size`: follows the RESP framing of what is read, fails a reply over the limit |
//! | `sentinel` | under Sentinel: where the primary is, `+switch-master` followed on every sentinel |
//! | `connection` | [`GuardConnection`]: command outcomes, cancellation, role refusals |
//! | `session` | what commands do to a connection's server-side state, in command order |
//! | `command` | how long a blocking command may wait; which commands only read (for retries) |
//! | `shared` | the one place outcomes are classified, counted, logged and fed to the breaker |
//! | `breaker` | the breaker's state machine and [`BreakerPolicy`] |
//! | [`mod@pubsub`] | [`Subscriber`]: subscriptions that PING, reconnect, resubscribe and report gaps |
//! | `probe` | the prober: readiness, verification connects, recovery without traffic |
//! | `clock` | backoff and lock-free instants |
//! | `throttle` | log lines that would repeat with traffic, once per interval |
//! | `tls` | (feature `tls`) rustls over the pool's own socket, handshake failures in words |
//! | `layer` | [`RedisGuardLayer`] (one pool per request), [`RequireRedisLayer`] (503 while the breaker is open) |
//! | `extract` | the [`Redis`], [`RedisFrom`] and [`RedisGuard`] extractors, which to take when, [`RedisRejection`] |
//! | `health` | [`Health`]: `/livez` and `/readyz`, with checks of the service's other dependencies |
//! | `error` | [`Error`] and its one mapping to HTTP, [`PoolState`] |
//! | [`mod@metrics`] | the metric contract |
//! | `prometheus` | (feature `prometheus`) the `/metrics` route; buckets for your own `PrometheusBuilder` |
//! | `testkit` | (feature `testkit`) a real `redis-server`, a Sentinel deployment and a fault-injecting proxy |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations)]

mod breaker;
mod clock;
mod command;
pub mod config;
mod connection;
mod error;
mod extract;
mod health;
mod hedge;
mod inner;
mod layer;
mod manager;
pub mod metrics;
mod multiplexed;
mod pool;
mod probe;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod pubsub;
mod refusals;
mod reply_limit;
mod reply_times;
mod sentinel;
mod session;
mod shared;
#[cfg(feature = "testkit")]
pub mod testkit;
mod throttle;
#[cfg(feature = "tls")]
mod tls;
mod transport;

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

/// The README's examples, compiled with the doc tests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
