//! [`FaultProxy`]: a TCP proxy between a client and Redis that injects network faults.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with connections it accepts from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// Forward both ways.
    #[default]
    Pass,
    /// Reset each new connection at once (RST), as a host with nothing listening would.
    Refuse,
    /// Accept and never forward: the handshake hangs, as behind a black-holing firewall.
    Freeze,
    /// Forward, holding each reply back this long, as a slow or distant server.
    Delay(Duration),
}

/// How long [`FaultProxy::reset_all`] and [`FaultProxy::freeze_all`] wait for every
/// connection to apply the fault.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What one proxied connection is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum LinkCommand {
    Pass,
    /// Stop forwarding, keep both sockets open: a half-open connection, no FIN, no RST.
    Freeze,
    /// Close both sockets with RST.
    Reset,
}

/// The control side of one proxied connection.
#[derive(Debug)]
struct Link {
    command: watch::Sender<LinkCommand>,
    /// The command the forwarding task has carried out, so a fault is in force (not merely
    /// requested) when `reset_all` or `freeze_all` returns.
    applied: AtomicU8,
}

#[derive(Debug)]
struct ProxyState {
    upstream: Mutex<SocketAddr>,
    mode: Mutex<ProxyMode>,
    links: Mutex<Vec<Weak<Link>>>,
    accepted: AtomicU64,
}

impl ProxyState {
    fn upstream(&self) -> SocketAddr {
        *self.upstream.lock().expect("proxy upstream lock")
    }

    fn mode(&self) -> ProxyMode {
        *self.mode.lock().expect("proxy mode lock")
    }

    /// Sends `command` to every live connection and waits until each has carried it out or
    /// closed. Returns how many connections it reached.
    async fn broadcast(&self, command: LinkCommand) -> usize {
        let links: Vec<Arc<Link>> = {
            let mut links = self.links.lock().expect("proxy links lock");
            links.retain(|link| link.strong_count() > 0);
            links.iter().filter_map(Weak::upgrade).collect()
        };
        for link in &links {
            link.command.send_replace(command);
        }
        let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
        while links.iter().any(|link| {
            // A reset link is done when its task has dropped the sockets.
            let alive = Arc::strong_count(link) > 1;
            alive && link.applied.load(Ordering::Acquire) != command as u8
        }) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        links.len()
    }
}

/// A fault-injecting TCP proxy on a free loopback port, switched between modes at run time.
///
/// ```no_run
/// use redis_guard::testkit::{FaultProxy, ProxyMode, RedisServer};
///
/// # async fn demo() -> std::io::Result<()> {
/// let server = RedisServer::start()?;
/// let proxy = FaultProxy::start(server.addr()).await?;
/// let url = proxy.url(); // point the pool here
/// proxy.reset_all().await; // "connection reset by peer" on every open connection
/// proxy.freeze_all().await; // existing connections go silent, no FIN, no RST
/// proxy.set_mode(ProxyMode::Refuse); // new connections are reset at once
/// proxy.set_mode(ProxyMode::Pass);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    accept_loop: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port, in [`ProxyMode::Pass`].
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ProxyState {
            upstream: Mutex::new(upstream),
            mode: Mutex::new(ProxyMode::Pass),
            links: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(FaultProxy {
            addr,
            state,
            accept_loop,
        })
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets what happens to new connections; [`ProxyMode::Delay`] also applies to open ones.
    pub fn set_mode(&self, mode: ProxyMode) {
        *self.state.mode.lock().expect("proxy mode lock") = mode;
    }

    /// Sends new connections to `upstream` from now on; open ones stay where they are, as
    /// when a managed Redis's DNS name moves to a promoted replica.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.state.upstream.lock().expect("proxy upstream lock") = upstream;
    }

    /// Resets (RST) every open connection, both ways; returns how many. When it returns, the
    /// resets have been sent.
    pub async fn reset_all(&self) -> usize {
        self.state.broadcast(LinkCommand::Reset).await
    }

    /// Freezes every open connection: nothing more is forwarded either way, and neither side
    /// is told. Returns how many; when it returns, the freeze is in force.
    pub async fn freeze_all(&self) -> usize {
        self.state.broadcast(LinkCommand::Freeze).await
    }

    /// Connections accepted since start, whatever became of them: the client's connect attempts.
    pub fn connections_accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Connections currently open through the proxy (frozen ones included).
    pub fn open_connections(&self) -> usize {
        let mut links = self.state.links.lock().expect("proxy links lock");
        links.retain(|link| link.strong_count() > 0);
        links.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        for link in self.state.links.lock().expect("proxy links lock").iter() {
            if let Some(link) = link.upgrade() {
                link.command.send_replace(LinkCommand::Reset);
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<ProxyState>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        state.accepted.fetch_add(1, Ordering::Relaxed);
        let initial = match state.mode() {
            ProxyMode::Refuse => {
                reset(&client);
                continue;
            }
            ProxyMode::Freeze => LinkCommand::Freeze,
            ProxyMode::Pass | ProxyMode::Delay(_) => LinkCommand::Pass,
        };
        let (command, commands) = watch::channel(initial);
        let link = Arc::new(Link {
            command,
            applied: AtomicU8::new(LinkCommand::Pass as u8),
        });
        state
            .links
            .lock()
            .expect("proxy links lock")
            .push(Arc::downgrade(&link));
        let state = state.clone();
        // The task holds the link for as long as it forwards.
        tokio::spawn(async move {
            let _ = forward(client, state, &link, commands).await;
        });
    }
}

/// Closes a socket with RST instead of FIN.
fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn forward(
    mut client: TcpStream,
    state: Arc<ProxyState>,
    link: &Link,
    mut commands: watch::Receiver<LinkCommand>,
) -> io::Result<()> {
    let mut upstream = None;
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_server = vec![0u8; 16 * 1024];
    loop {
        let command = *commands.borrow_and_update();
        if command != LinkCommand::Reset {
            link.applied.store(command as u8, Ordering::Release);
        }
        match command {
            LinkCommand::Reset => {
                reset(&client);
                if let Some(server) = &upstream {
                    reset(server);
                }
                // Returning drops both sockets (sending the RSTs), then the link.
                return Ok(());
            }
            LinkCommand::Freeze => {
                // Hold both sockets open and read nothing until told otherwise.
                if commands.changed().await.is_err() {
                    return Ok(());
                }
                continue;
            }
            LinkCommand::Pass => {}
        }
        // Connect upstream lazily, so a connection accepted while frozen never reaches Redis.
        let server = match &mut upstream {
            Some(server) => server,
            None => match TcpStream::connect(state.upstream()).await {
                Ok(server) => upstream.insert(server),
                Err(e) => {
                    // As a load balancer in front of a dead server: the client is reset.
                    reset(&client);
                    return Err(e);
                }
            },
        };
        // A command first: once a fault is broadcast, no more bytes cross a link before it
        // applies, so a connection cannot finish a handshake (and be handed out) in the middle
        // of a reset that was meant to hit it.
        tokio::select! {
            biased;
            changed = commands.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            read = client.read(&mut from_client) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                server.write_all(&from_client[..n]).await?;
            }
            read = server.read(&mut from_server) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                if let ProxyMode::Delay(delay) = state.mode() {
                    tokio::time::sleep(delay).await;
                }
                client.write_all(&from_server[..n]).await?;
            }
        }
    }
}
