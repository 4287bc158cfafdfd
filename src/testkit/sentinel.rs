//! [`SentinelDeployment`]: a primary, a replica and three sentinels, all real processes on
//! loopback.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use super::{RedisServer, TestCertificates};

/// The master name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "mymaster";
/// How long a deployment may take to be ready: sentinels find each other and the replica
/// through the primary's hello channel and `INFO`, every second or two.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for a [`SentinelDeployment`].
///
/// ```
/// use std::time::Duration;
/// use redis_guard::testkit::SentinelOptions;
///
/// let options = SentinelOptions {
///     down_after: Duration::from_millis(500),
///     ..SentinelOptions::default()
/// };
/// assert_eq!(options.sentinels, 3);
/// ```
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    /// How many sentinels (the quorum is a majority of them).
    pub sentinels: usize,
    /// `down-after-milliseconds`: how long the primary may not answer before it is down.
    pub down_after: Duration,
    /// `requirepass` (and `masterauth`) of the Redis nodes.
    pub redis_password: Option<String>,
    /// `requirepass` of the sentinels (they use it among themselves too).
    pub sentinel_password: Option<String>,
    /// TLS everywhere with these certificates (for names `localhost` and `127.0.0.1`): the
    /// nodes replicate and the sentinels monitor and talk to each other over TLS, and
    /// [`SentinelDeployment::url`] is a `rediss+sentinel://` URL. The plain ports stay open
    /// for admin commands.
    pub tls: Option<Arc<TestCertificates>>,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        Self {
            sentinels: 3,
            down_after: Duration::from_secs(1),
            redis_password: None,
            sentinel_password: None,
            tls: None,
        }
    }
}

/// A primary, a replica of it and sentinels monitoring it as [`MASTER_NAME`], started and
/// ready to fail over; every process is killed when this is dropped.
///
/// ```no_run
/// use redis_guard::testkit::{SentinelDeployment, SentinelOptions};
/// use redis_guard::{Config, RedisGuard};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let deployment = SentinelDeployment::start(SentinelOptions::default())?;
/// let guard = RedisGuard::connect(Config::builder(deployment.url()).build()?).await?;
/// deployment.failover()?; // SENTINEL FAILOVER: the replica becomes the primary
/// let _conn = guard.get().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SentinelDeployment {
    nodes: [RedisServer; 2],
    sentinels: Vec<RedisServer>,
    options: SentinelOptions,
}

impl SentinelDeployment {
    /// Starts the deployment and waits until every sentinel knows the replica and the other
    /// sentinels: until then a failover could not happen.
    pub fn start(options: SentinelOptions) -> io::Result<SentinelDeployment> {
        let mut node_args: Vec<String> = Vec::new();
        if let Some(password) = &options.redis_password {
            node_args.extend(["--requirepass".into(), password.clone()]);
            node_args.extend(["--masterauth".into(), password.clone()]);
        }
        if options.tls.is_some() {
            node_args.extend(["--tls-replication".into(), "yes".into()]);
        }
        let args: Vec<&str> = node_args.iter().map(String::as_str).collect();
        let start = |args: &[&str]| match &options.tls {
            Some(certs) => RedisServer::start_tls(certs, false, args),
            None => RedisServer::start_with_args(args),
        };
        let primary = start(&args)?;
        // Under TLS, the nodes and the sentinels reach the nodes at their TLS ports.
        let primary_port = match &options.tls {
            Some(_) => primary.tls_addr().port(),
            None => primary.port(),
        };
        let mut replica_args = args.clone();
        let primary_port_text = primary_port.to_string();
        replica_args.extend(["--replicaof", "127.0.0.1", &primary_port_text]);
        let replica = start(&replica_args)?;
        let quorum = options.sentinels / 2 + 1;
        let mut config = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {quorum}\n\
             sentinel down-after-milliseconds {MASTER_NAME} {}\n\
             sentinel failover-timeout {MASTER_NAME} 10000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            options.down_after.as_millis()
        );
        if let Some(password) = &options.redis_password {
            config.push_str(&format!("sentinel auth-pass {MASTER_NAME} {password}\n"));
        }
        if let Some(password) = &options.sentinel_password {
            config.push_str(&format!(
                "requirepass {password}\nsentinel sentinel-pass {password}\n"
            ));
        }
        let sentinels = (0..options.sentinels)
            .map(|_| match &options.tls {
                Some(certs) => {
                    let tls_port = super::server::free_port()?;
                    let (cert, key) = certs.server();
                    let config = format!(
                        "{config}tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\n\
                         tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                        cert.display(),
                        key.display(),
                        certs.ca().display()
                    );
                    let mut sentinel = RedisServer::start_sentinel(&config, &[])?;
                    sentinel.set_tls_port(tls_port);
                    Ok(sentinel)
                }
                None => RedisServer::start_sentinel(&config, &[]),
            })
            .collect::<io::Result<Vec<_>>>()?;
        let deployment = SentinelDeployment {
            nodes: [primary, replica],
            sentinels,
            options,
        };
        deployment.wait_until_ready()?;
        Ok(deployment)
    }

    /// `redis+sentinel://[:password@]127.0.0.1:<port>,.../mymaster[?sentinel_password=...]`;
    /// under TLS, `rediss+sentinel://[:password@]localhost:<TLS port>,...`.
    pub fn url(&self) -> String {
        let auth = match &self.options.redis_password {
            Some(password) => format!(":{}@", percent_encode(password)),
            None => String::new(),
        };
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| match self.options.tls {
                Some(_) => format!("localhost:{}", s.tls_addr().port()),
                None => format!("127.0.0.1:{}", s.port()),
            })
            .collect();
        let scheme = match self.options.tls {
            Some(_) => "rediss+sentinel",
            None => "redis+sentinel",
        };
        let query = match &self.options.sentinel_password {
            Some(password) => format!("?sentinel_password={}", percent_encode(password)),
            None => String::new(),
        };
        format!("{scheme}://{auth}{}/{MASTER_NAME}{query}", hosts.join(","))
    }

    /// The two Redis nodes, primary first as started: after a failover, the first may be the
    /// replica. See [`SentinelDeployment::primary_port`].
    pub fn nodes(&mut self) -> &mut [RedisServer; 2] {
        &mut self.nodes
    }

    /// The sentinels.
    pub fn sentinels(&mut self) -> &mut [RedisServer] {
        &mut self.sentinels
    }

    /// The node listening on `port` (its plain port, or its TLS port under TLS).
    pub fn node_at(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port || n.has_tls_port(port))
    }

    /// The port of the primary, as the first sentinel that answers says (its TLS port under
    /// TLS).
    pub fn primary_port(&self) -> io::Result<u16> {
        for sentinel in &self.sentinels {
            if let Ok(Value::Array(addr)) = self.sentinel_command(
                sentinel,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
            ) && let Some(port) = addr.get(1).and_then(text)
            {
                return port.parse().map_err(io::Error::other);
            }
        }
        Err(io::Error::other("no sentinel answered"))
    }

    /// Runs a command on the node listening on `port` (its plain or TLS port), with its
    /// password.
    pub fn node_command(&self, port: u16, args: &[&str]) -> redis::RedisResult<Value> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.port() == port || n.has_tls_port(port))
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Client, "no such node")))?;
        node.command_as(self.options.redis_password.as_deref(), args)
    }

    /// `SENTINEL FAILOVER`: the first sentinel that accepts promotes the replica at once,
    /// without waiting for the primary to fail. It returns once a sentinel accepted: Sentinel
    /// turns the old primary into a replica seconds later, so call
    /// [`wait_until_ready`](Self::wait_until_ready) before failing over again, or the next
    /// failover may promote a node that lacks the writes acknowledged in between.
    pub fn failover(&self) -> io::Result<()> {
        let mut last = None;
        for sentinel in &self.sentinels {
            match self.sentinel_command(sentinel, &["SENTINEL", "FAILOVER", MASTER_NAME]) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(io::Error::other(format!(
            "no sentinel started the failover: {last:?}"
        )))
    }

    /// Subscribes to `+switch-master` on every sentinel (on their plain ports), from now on:
    /// the returned handle tells when the first announcement arrived.
    pub async fn watch_announcements(&self) -> redis::RedisResult<Announcements> {
        let announcements = Announcements::default();
        for sentinel in &self.sentinels {
            let info = sentinel.connection_info(self.options.sentinel_password.as_deref());
            let resp3 = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let info = info.set_redis_settings(resp3);
            let (pushes, mut received) = tokio::sync::mpsc::unbounded_channel();
            let settings = redis::AsyncConnectionConfig::new().set_push_sender(pushes);
            let mut conn = redis::Client::open(info)?
                .get_multiplexed_async_connection_with_config(&settings)
                .await?;
            conn.subscribe("+switch-master").await?;
            let first = announcements.first.clone();
            tokio::spawn(async move {
                let _subscribed = conn;
                while let Some(push) = received.recv().await {
                    if push.kind == redis::PushKind::Message {
                        let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
                        first.get_or_insert_with(Instant::now);
                    }
                }
            });
        }
        Ok(announcements)
    }

    /// Runs a command on a sentinel, with the sentinels' password.
    pub fn sentinel_command(
        &self,
        sentinel: &RedisServer,
        args: &[&str],
    ) -> redis::RedisResult<Value> {
        sentinel.command_as(self.options.sentinel_password.as_deref(), args)
    }

    /// Waits until every sentinel sees the replica up and every other sentinel.
    pub fn wait_until_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.sentinels.iter().all(|s| self.sentinel_is_ready(s)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the sentinels did not see the whole deployment within {READY_TIMEOUT:?}"
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn sentinel_is_ready(&self, sentinel: &RedisServer) -> bool {
        let replicas = self.sentinel_command(sentinel, &["SENTINEL", "REPLICAS", MASTER_NAME]);
        let others = self.sentinel_command(sentinel, &["SENTINEL", "SENTINELS", MASTER_NAME]);
        let replica_up = matches!(&replicas, Ok(Value::Array(list)) if list.iter().any(|r| {
            field(r, "flags").as_deref() == Some("slave")
                && field(r, "master-link-status").as_deref() == Some("ok")
        }));
        let sentinels_known =
            matches!(&others, Ok(Value::Array(list)) if list.len() + 1 == self.sentinels.len());
        replica_up && sentinels_known
    }
}

/// When the first `+switch-master` of a [`SentinelDeployment`] arrived: see
/// [`SentinelDeployment::watch_announcements`].
#[derive(Debug, Clone, Default)]
pub struct Announcements {
    first: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Announcements {
    /// When the first sentinel announced a new primary, if one did yet.
    pub fn first(&self) -> Option<Instant> {
        *self.first.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every byte but letters, digits and `-._~` as `%XX`: safe in the user info and the query.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A field of a sentinel's description of an instance (a flat list of names and values).
fn field(instance: &Value, name: &str) -> Option<String> {
    let Value::Array(items) = instance else {
        return None;
    };
    items
        .chunks(2)
        .find(|pair| text(&pair[0]).as_deref() == Some(name))
        .and_then(|pair| pair.get(1).and_then(text))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
