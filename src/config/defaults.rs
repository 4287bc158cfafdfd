//! Every default, each with the reason for its value.

use std::time::Duration;

/// The `pool` label value when none is given.
pub const NAME: &str = "default";
/// bb8-redis's default, so a service moving over keeps its connection footprint.
pub const MAX_SIZE: u32 = 10;
/// Subscriptions a pool holds at once, each on a Redis connection of its own. A service
/// subscribes a few times and fans each subscription out to its clients (a
/// `tokio::sync::broadcast`); one subscription per HTTP client is a connection per client,
/// which this bound turns into a clear error before Redis's `maxclients` (10,000 by default,
/// shared by the fleet: 100 pods at 10 pool connections and 64 subscriptions stay under it)
/// turns it into an outage.
pub const MAX_SUBSCRIPTIONS: u32 = 64;
/// One warm connection, so the first request after start-up or an idle spell pays no connect.
pub const MIN_IDLE: u32 = 1;
/// The whole budget of one checkout, retries and validation included. bb8's 30 s default
/// turns an outage into 30 s hangs; a cache lookup that cannot get a connection in 1 s
/// should fail and let the caller degrade.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP connect plus the AUTH/SELECT handshake. Redis on a LAN answers in milliseconds;
/// a SYN that goes unanswered for a second is an outage, not latency.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a single command may take. Cache commands take microseconds; a reply later
/// than this means a frozen socket or a stuck server. Raise it for blocking commands.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The PING that proves an idle connection alive. A loopback or LAN PING takes well under
/// a millisecond, so 250 ms only ever fires on a dead or frozen socket.
pub const VALIDATION_TIMEOUT: Duration = Duration::from_millis(250);
/// A connection that completed a command this recently is handed out without a PING
/// (HikariCP's `aliveBypassWindowMs`): on a busy pool validation then costs nothing.
pub const VALIDATION_BYPASS: Duration = Duration::from_millis(500);
/// Idle connections are closed after this. Below the 4-minute idle cut-off of Azure's load
/// balancers and the 350 s of AWS NLB, the shortest common middlebox timeouts.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// Connections are renewed after this, so a failover, a DNS change or a server-side leak is
/// picked up without a restart.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Each connection's lifetime is shortened by a random share up to this, so a fleet started
/// together does not reconnect in lockstep.
pub const LIFETIME_JITTER: f64 = 0.05;
/// In shared mode, plain commands are pipelined over one connection, as redis-rs's
/// `ConnectionManager` does: one socket saturates a Redis core, and the more calls share a
/// write the fewer system calls each costs (a second connection lowered throughput by up to
/// a third at concurrency 32 on two cores). More spread the calls a freezing socket fails.
pub const SHARED_CONNECTIONS: u32 = 1;
/// TCP keepalive as go-redis and redis-py set it: the first probe after 30 s of silence,
/// then every 5 s, 3 probes. Set per socket, so Windows' 2-hour registry default is moot.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_RETRIES: u32 = 3;
/// Linux `TCP_USER_TIMEOUT`: idle + interval x probes, so the kernel gives up on unacked
/// data at the same moment keepalive would have declared the peer dead.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(45);
/// While Redis is healthy and no command answered within this interval, the prober PINGs
/// once: readiness is never older than this, at no more than one command per second per
/// pod, and none while traffic proves Redis alive.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// After a failed connect the pool tries once more at once, then waits this long (plus up
/// to 15 % jitter) between attempts, whoever asks for them: at most 5 connect attempts a
/// second while Redis is down, and the first success within about 230 ms of Redis accepting
/// connections again.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The pause doubles per failure up to this. Equal to the minimum by default: a quick
/// recovery matters more than sparing a Redis that refuses connections in microseconds.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// The most bytes one reply may have. Half the largest string Redis accepts by default
/// (`proto-max-bulk-len`, 512 MiB), where cache values are kilobytes: a reply this large is a
/// mistake (`KEYS *`, an unbounded `LRANGE`) or a hostile server, and a few connections each
/// buffering one must not exhaust a pod's memory.
pub const MAX_REPLY_SIZE: u64 = 256 * 1024 * 1024;
