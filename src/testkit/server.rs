//! [`RedisServer`]: a real `redis-server` process on a free loopback port.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped server may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports tried when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` owned by a test: started on a free loopback port, with no persistence,
/// and killed when dropped.
///
/// ```no_run
/// use redis_guard::testkit::RedisServer;
///
/// let mut server = RedisServer::start().expect("redis-server is installed");
/// let url = server.url(); // redis://127.0.0.1:<port>
/// server.restart().unwrap(); // same port, empty data set
/// server.stop();
/// server.start_again().unwrap();
/// ```
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// The TLS port, for servers started with [`RedisServer::start_tls`].
    tls_port: Option<u16>,
    args: Vec<String>,
    /// For a sentinel: its configuration file (Sentinel rewrites it as it learns).
    sentinel_config: Option<PathBuf>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with the default settings.
    pub fn start() -> io::Result<RedisServer> {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra `redis-server` arguments, such as
    /// `["--requirepass", "secret"]`.
    ///
    /// Fails with a message naming the package to install when `redis-server` is missing.
    pub fn start_with_args(args: &[&str]) -> io::Result<RedisServer> {
        Self::start_in_mode(args, None)
    }

    /// Starts a sentinel (`redis-server <config> --sentinel`) whose configuration file holds
    /// `config` (`sentinel monitor ...` lines and the like), with extra arguments `args`.
    /// See [`SentinelDeployment`](crate::testkit::SentinelDeployment) for a whole deployment.
    pub fn start_sentinel(config: &str, args: &[&str]) -> io::Result<RedisServer> {
        Self::start_in_mode(args, Some(config))
    }

    fn start_in_mode(args: &[&str], sentinel_config: Option<&str>) -> io::Result<RedisServer> {
        ensure_installed()?;
        let dir = tempfile::Builder::new().prefix("redis-guard-").tempdir()?;
        let sentinel_config = match sentinel_config {
            Some(text) => {
                let path = dir.path().join("sentinel.conf");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut server = RedisServer {
            port: 0,
            tls_port: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            sentinel_config,
            dir,
            child: None,
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                // The port was taken between picking and binding: pick another.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Starts a server that also accepts TLS connections on a second port, with the server
    /// certificate of `certs`; with `client_auth` it requires a client certificate signed by
    /// their CA. The plain port stays open for `command` and admin use.
    pub fn start_tls(
        certs: &crate::testkit::TestCertificates,
        client_auth: bool,
        args: &[&str],
    ) -> io::Result<RedisServer> {
        let tls_port = free_port()?;
        let (cert, key) = certs.server();
        let mut all: Vec<String> = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            cert.to_string_lossy().into_owned(),
            "--tls-key-file".into(),
            key.to_string_lossy().into_owned(),
            "--tls-ca-cert-file".into(),
            certs.ca().to_string_lossy().into_owned(),
            "--tls-auth-clients".into(),
            if client_auth { "yes" } else { "no" }.into(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut server = Self::start_with_args(&all)?;
        server.tls_port = Some(tls_port);
        Ok(server)
    }

    /// Records the TLS port a sentinel's configuration file opened.
    pub(crate) fn set_tls_port(&mut self, port: u16) {
        self.tls_port = Some(port);
    }

    /// Whether `port` is this server's TLS port.
    pub(crate) fn has_tls_port(&self, port: u16) -> bool {
        self.tls_port == Some(port)
    }

    /// `rediss://localhost:<tls port>`, for a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://localhost:{}",
            self.tls_port.expect("a TLS server")
        )
    }

    /// The TLS port's address, for a server started with [`RedisServer::start_tls`].
    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.tls_port.expect("a TLS server")))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback port the server listens on, also after a restart.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit. Clients see their
    /// connections closed (EOF).
    pub fn stop(&mut self) {
        // std can only SIGKILL; SIGTERM is a graceful shutdown, as an orchestrated restart.
        self.signal("-TERM");
        self.reap();
    }

    /// Freezes the process (SIGSTOP): its sockets stay open and the kernel still completes TCP
    /// handshakes, but nothing answers, as a server stuck in swap or a paused VM.
    /// [`resume`](Self::resume) lets it go on.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](Self::pause)d server go on (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&mut self, signal: &str) {
        if let Some(child) = self.child.as_mut() {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        self.reap();
    }

    /// Starts the server again on the same port, after [`stop`](Self::stop) or
    /// [`kill`](Self::kill).
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn()
    }

    /// Stops and starts the server on the same port.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Runs one command on a fresh admin connection, e.g.
    /// `server.command(&["CLIENT", "KILL", "TYPE", "normal"])`.
    pub fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        self.command_as(None, args)
    }

    /// [`RedisServer::command`] on a server that wants a password.
    pub fn command_as(
        &self,
        password: Option<&str>,
        args: &[&str],
    ) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.connection_info(password))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn)
    }

    /// How to reach the server's plain port, with `password` if given (any characters).
    pub(crate) fn connection_info(&self, password: Option<&str>) -> redis::ConnectionInfo {
        let mut redis = redis::RedisConnectionInfo::default();
        if let Some(password) = password {
            redis = redis.set_password(password);
        }
        redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            "127.0.0.1".into(),
            self.port,
        ))
        .expect("an address is a connection info")
        .set_redis_settings(redis)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        if let Some(config) = &self.sentinel_config {
            // The configuration file comes first.
            command.arg(config).arg("--sentinel");
        }
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            // A primary would wait 5 s (Redis 7's default) for more replicas before it sends
            // the first one its data: a replica made in a test syncs at once instead.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = spawn_tied_to_this_process(command)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server on port {} exited with {status}; log: {}",
                    self.port,
                    read_tail(&log)
                )));
            }
            // The log line too: between picking the free port and binding it, another
            // listener (a proxy, another test's server) may take it and answer the connect.
            let ready_line = match self.sentinel_config {
                Some(_) => "Sentinel ID is",
                None => "Ready to accept connections",
            };
            let ready = std::fs::read_to_string(&log).is_ok_and(|text| text.contains(ready_line));
            if ready && TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server on port {} not ready after {READY_TIMEOUT:?}",
                        self.port
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn reap(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The server's data and log directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `command` so that it dies with this process, however this process ends (a test
/// binary killed by a timeout, a demo killed with SIGKILL): no `redis-server` is left orphaned.
///
/// Linux's parent-death signal fires when the *thread* that spawned the child exits, so every
/// child is spawned from one thread that lives as long as the process.
fn spawn_tied_to_this_process(command: Command) -> io::Result<Child> {
    use std::sync::Mutex;
    use std::sync::mpsc;

    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: Mutex<Option<mpsc::Sender<Request>>> = Mutex::new(None);

    let (reply, result) = mpsc::channel();
    let mut spawner = SPAWNER.lock().unwrap_or_else(|e| e.into_inner());
    let sender = spawner.get_or_insert_with(|| {
        let (sender, requests) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("redis-guard-testkit-spawner".into())
            .spawn(move || {
                for (mut command, reply) in requests {
                    tie_to_parent(&mut command);
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawner thread");
        sender
    });
    sender
        .send((command, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    drop(spawner);
    result
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

#[cfg(target_os = "linux")]
fn tie_to_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe, and the closure touches nothing else between fork
    // and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn tie_to_parent(_command: &mut Command) {}

fn ensure_installed() -> io::Result<()> {
    match Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "redis-server is not installed or not on PATH: install it \
             (Debian/Ubuntu: `apt-get install redis-server`) or run `make test`, which does",
        )),
        Err(e) => Err(e),
    }
}

pub(crate) fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn read_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
