//! Real parts for tests (feature `testkit`): a [`RedisServer`] process on a free loopback port,
//! a [`SentinelDeployment`] (primary, replica, sentinels), and a [`FaultProxy`] that resets,
//! freezes, refuses and delays connections.
//!
//! They are what redis-guard's own tests use, and they work the same in yours: every fault is
//! real (a killed process, a reset socket, a silent socket), not a mock.
//!
//! ```no_run
//! use redis_guard::testkit::{FaultProxy, RedisServer};
//! use redis_guard::{Config, RedisGuard};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = RedisServer::start()?;
//! let proxy = FaultProxy::start(server.addr()).await?;
//! let guard = RedisGuard::connect(Config::builder(proxy.url()).build()?).await?;
//! proxy.reset_all();
//! let _conn = guard.get().await?; // a fresh connection, not the reset one
//! # Ok(()) }
//! ```

mod certs;
mod proxy;
mod sentinel;
mod server;

pub use certs::TestCertificates;
pub use proxy::{FaultProxy, ProxyMode};
pub use sentinel::{Announcements, MASTER_NAME, SentinelDeployment, SentinelOptions};
pub use server::RedisServer;
