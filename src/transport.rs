//! Opening the socket under a pooled connection, and watching it.
//!
//! redis-rs hides its socket inside `MultiplexedConnection`, so a pool cannot ask it whether the
//! peer has gone. We open the socket ourselves (with keepalive, `TCP_NODELAY` and
//! `TCP_USER_TIMEOUT` set per socket) and wrap it in a [`TrackedStream`] that records EOF and
//! I/O errors as the connection's driver reads. The driver reads even while the connection is
//! idle, so a server restart, `CLIENT KILL`, a server `timeout` or a reset is on record before
//! the next checkout, at no round trip.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::reply_limit::{ReplyTooLarge, ReplyTracker};

/// Why a socket stopped being usable, as seen from below the Redis protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LinkState {
    /// The connection is still being set up: its failure is the connect's, not a working
    /// socket's.
    Connecting = 5,
    Open = 0,
    /// The peer closed the connection (FIN): restart, `CLIENT KILL`, server `timeout`.
    Eof = 1,
    /// A read or write failed: reset by peer, broken pipe, `TCP_USER_TIMEOUT`, keepalive.
    Failed = 2,
    /// The connection's driver task ended (it does so after either of the above, or on a
    /// protocol error).
    DriverEnded = 3,
    /// The pool gave the connection up (evicted, idle, expired, or the pool closed).
    Retired = 4,
    /// A reply exceeded `max_reply_size`, and the read failed: one reply's fault, not the
    /// socket's nor Redis's.
    ReplyTooLarge = 6,
}

impl LinkState {
    /// Whether the socket failed on its own, rather than being given up by the pool.
    pub(crate) fn is_failure(self) -> bool {
        matches!(
            self,
            LinkState::Eof | LinkState::Failed | LinkState::DriverEnded
        )
    }
}

/// Called once, with the first reason an established link closed.
pub(crate) type OnClose = Box<dyn Fn(LinkState) + Send + Sync>;

/// The health of one socket, written by the driver task and read at checkout. It closes
/// exactly once, at the first failure or when the pool gives the connection up (at the latest
/// when it is dropped). The close of a link that was established (its connect succeeded) is
/// reported, so the pool can count the sockets that work.
pub(crate) struct LinkHealth {
    state: AtomicU8,
    on_close: OnClose,
    /// Bytes the kernel (or the TLS layer) has accepted from the driver.
    written: AtomicU64,
    /// The first bytes read while connecting: Redis turns a connection away at accept
    /// (`maxclients`, protected mode) with an error line and closes it, and redis-rs takes
    /// that line for the reply to its first set-up command, reporting only the close after.
    greeting: std::sync::Mutex<Vec<u8>>,
    /// The reply that closed the link, if one was too large.
    too_large: std::sync::OnceLock<ReplyTooLarge>,
    /// The TLS failure that closed the link, in words: an alert can arrive after the
    /// handshake, in a read of the connection's driver, which passes it on as text only.
    #[cfg(feature = "tls")]
    tls_failure: std::sync::OnceLock<String>,
}

/// How Redis's refusals at accept begin: at `maxclients`, and in protected mode.
const ACCEPT_REFUSALS: [&str; 2] = ["ERR max number of clients reached", "DENIED "];

/// How much of the first reply is kept: enough for Redis's accept-time error lines.
const GREETING_BYTES: usize = 128;

impl std::fmt::Debug for LinkHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LinkHealth").field(&self.state()).finish()
    }
}

impl Default for LinkHealth {
    fn default() -> Self {
        Self::new(Box::new(|_| {}))
    }
}

impl Drop for LinkHealth {
    fn drop(&mut self) {
        self.close(LinkState::Retired);
    }
}

impl LinkHealth {
    pub(crate) fn new(on_close: OnClose) -> Self {
        Self {
            state: AtomicU8::new(LinkState::Connecting as u8),
            on_close,
            written: AtomicU64::new(0),
            greeting: std::sync::Mutex::new(Vec::new()),
            too_large: std::sync::OnceLock::new(),
            #[cfg(feature = "tls")]
            tls_failure: std::sync::OnceLock::new(),
        }
    }

    /// A read or write failed with `error`.
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    fn failed(&self, error: &io::Error) {
        #[cfg(feature = "tls")]
        if let Some(cause) = crate::tls::tls_failure(error) {
            let _ = self.tls_failure.set(cause);
        }
        self.close(LinkState::Failed);
    }

    /// The TLS failure that closed the link, if that is why it closed.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_failure(&self) -> Option<&str> {
        self.tls_failure.get().map(String::as_str)
    }

    /// The reply over `max_reply_size` that closed the link, if that is why it closed.
    pub(crate) fn too_large(&self) -> Option<ReplyTooLarge> {
        self.too_large.get().copied()
    }

    /// Keeps the start of what the server sent while the connection is being set up.
    fn capture(&self, read: &[u8]) {
        if self.state.load(Ordering::Acquire) != LinkState::Connecting as u8 {
            return;
        }
        let mut greeting = self.greeting.lock().unwrap_or_else(|p| p.into_inner());
        let room = GREETING_BYTES.saturating_sub(greeting.len());
        greeting.extend_from_slice(&read[..read.len().min(room)]);
    }

    /// The error line the server turned the connection away with, if the connection began
    /// with one, e.g. `ERR max number of clients reached`: read by the driver, then the
    /// connection closed (an error reply to a command, `WRONGPASS`, leaves it open); or still
    /// `unread` in the socket (the driver failed writing to the closed socket first).
    /// Printable ASCII only: it reaches logs and errors.
    pub(crate) fn turned_away(&self, unread: &[u8]) -> Option<String> {
        let greeting = self.greeting.lock().unwrap_or_else(|p| p.into_inner());
        let (start, read) = match greeting.is_empty() {
            true => (unread, false),
            false => (&greeting[..], true),
        };
        let line = start.strip_prefix(b"-")?;
        let end = line.windows(2).position(|w| w == b"\r\n")?;
        let line: String = line[..end]
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '?'
                }
            })
            .collect();
        let closed = matches!(self.state(), LinkState::Eof | LinkState::Failed);
        // Only Redis's own refusals at accept: an error reply to a set-up command
        // (`CLIENT SETINFO` on Redis 7.0) followed by a kill is no refusal.
        let refusal = ACCEPT_REFUSALS.iter().any(|start| line.starts_with(start));
        (refusal && (!read || closed)).then_some(line)
    }

    /// Whether nothing at all was read while connecting.
    pub(crate) fn heard_nothing(&self) -> bool {
        self.greeting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// How many bytes the driver has written so far: a call that fails on a link that failed
    /// before this moved was never sent.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub(crate) fn state(&self) -> LinkState {
        match self.state.load(Ordering::Acquire) {
            0 => LinkState::Open,
            1 => LinkState::Eof,
            2 => LinkState::Failed,
            3 => LinkState::DriverEnded,
            4 => LinkState::Retired,
            6 => LinkState::ReplyTooLarge,
            _ => LinkState::Connecting,
        }
    }

    /// The connect succeeded: from now on a close is reported. False if the socket closed
    /// already.
    pub(crate) fn establish(&self) -> bool {
        self.state
            .compare_exchange(
                LinkState::Connecting as u8,
                LinkState::Open as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Records the first reason the link closed, and reports it if the link was established;
    /// later ones add nothing.
    pub(crate) fn close(&self, state: LinkState) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current != LinkState::Open as u8 && current != LinkState::Connecting as u8 {
                return;
            }
            match self.state.compare_exchange(
                current,
                state as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(previous) => {
                    if previous == LinkState::Open as u8 {
                        (self.on_close)(state);
                    }
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Whether the socket is still usable as far as is known (also while connecting).
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state(), LinkState::Open | LinkState::Connecting)
    }
}

/// A second handle on a connection's socket, to ask the kernel whether the peer has closed it.
///
/// The driver task may not have run since an RST or FIN arrived; a non-blocking `MSG_PEEK`
/// of one byte sees it anyway, costs one system call and consumes nothing. Owning a duplicate
/// descriptor (not the raw number) means the answer is always about this socket, even after
/// the driver has closed its own.
#[derive(Debug)]
pub(crate) struct PeerProbe(socket2::Socket);

impl PeerProbe {
    pub(crate) fn new<'s, S>(socket: &'s S) -> io::Result<Self>
    where
        SockRef<'s>: From<&'s S>,
    {
        SockRef::from(socket).try_clone().map(PeerProbe)
    }

    /// Closes the connection both ways now (a FIN to the peer), whoever else holds the socket.
    pub(crate) fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }

    /// What the kernel holds for the socket, without consuming anything.
    pub(crate) fn peer_state(&self) -> PeerState {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        match self.0.peek(&mut byte) {
            Ok(0) => PeerState::Closed,
            Ok(_) => PeerState::Unread,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                PeerState::Quiet
            }
            Err(_) => PeerState::Closed,
        }
    }

    /// Takes the first bytes waiting in the socket (non-blocking: none if nothing waits).
    /// Only for a connection that failed and is given up: the driver never sees them.
    pub(crate) fn take_unread(&self) -> Vec<u8> {
        let mut buf = [0; 128];
        match io::Read::read(&mut &self.0, &mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(_) => Vec::new(),
        }
    }

    /// Whether the peer closed (EOF) or reset the socket.
    #[cfg(test)]
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_state() == PeerState::Closed
    }
}

/// What a peek at a socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// Nothing to read: open and silent.
    Quiet,
    /// The peer closed (EOF) or reset it.
    Closed,
    /// Bytes the driver has not read yet: a late reply, or, under TLS, a `close_notify` alert
    /// that precedes the close itself. Not a close, but not proof of a working socket.
    Unread,
}

/// A stream that reports EOF and I/O errors, and the bytes written, to a shared [`LinkHealth`],
/// and fails a read that takes a reply over `max_reply_size` (see `reply_limit.rs`).
#[derive(Debug)]
pub(crate) struct TrackedStream<S> {
    inner: S,
    health: Arc<LinkHealth>,
    replies: ReplyTracker,
}

impl<S> TrackedStream<S> {
    /// A socket outside the pool (a subscription's, a sentinel's): its replies bounded alike,
    /// its health its own, not one of the pool's working links.
    pub(crate) fn standalone(inner: S, max_reply_size: u64) -> (Self, Arc<LinkHealth>) {
        let health = Arc::new(LinkHealth::default());
        (Self::new(inner, health.clone(), max_reply_size), health)
    }

    pub(crate) fn new(inner: S, health: Arc<LinkHealth>, max_reply_size: u64) -> Self {
        Self {
            inner,
            health,
            replies: ReplyTracker::new(max_reply_size),
        }
    }

    fn note<T>(&self, result: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(e)) = result {
            self.health.failed(e);
        }
    }

    fn note_written(&self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Ready(Ok(n)) => {
                self.health.written.fetch_add(*n as u64, Ordering::AcqRel);
            }
            other => self.note(other),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(&result);
        if let Poll::Ready(Ok(())) = result {
            let read = &buf.filled()[before..];
            if read.is_empty() && buf.remaining() > 0 {
                self.health.close(LinkState::Eof);
            } else {
                self.health.capture(read);
                // Before redis-rs buffers them: the failed read ends the connection's driver,
                // and the bytes read go with it.
                if let Err(e) = self.replies.follow(read) {
                    let cause = e.get_ref().and_then(|e| e.downcast_ref::<ReplyTooLarge>());
                    match cause {
                        Some(&too_large) => {
                            let _ = self.health.too_large.set(too_large);
                            self.health.close(LinkState::ReplyTooLarge);
                        }
                        // Not RESP: the server, or something posing as it, is broken.
                        None => self.health.close(LinkState::Failed),
                    }
                    return Poll::Ready(Err(e));
                }
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_written(&result);
        result
    }

    /// Forwarded, so the driver writes every queued command in one system call, as it does
    /// on a bare socket.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_written(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&result);
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long one address of a host name gets before the next one is tried alongside it
/// (RFC 8305's "connection attempt delay"): a black-holed first address then costs 250 ms,
/// not the whole connect timeout, and a live address behind it still connects.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// A byte stream to Redis: TCP, TLS over TCP, or a unix socket.
pub(crate) trait RedisStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RedisStream for T {}
pub(crate) type BoxedStream = Box<dyn RedisStream>;

/// [`connect_tcp`], then the TLS handshake if `config` asks for TLS (verifying `host`). Also
/// returns the probe on the TCP socket, under any TLS session: EOF and resets show there too.
/// A TLS failure is an I/O error carrying its `rustls::Error` (see `tls::tls_failure`).
///
/// A handshake still unanswered at `deadline` (the end of the connect budget) fails naming
/// the likeliest cause: a plain Redis reads the TLS greeting as the start of a command and
/// waits for the rest, so `rediss://` against a plain port would otherwise be a bare timeout.
pub(crate) async fn connect_secured(
    host: &str,
    port: u16,
    config: &Config,
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))] deadline: Option<Instant>,
) -> io::Result<(BoxedStream, PeerProbe)> {
    let tcp = connect_tcp(host, port, config).await?;
    let probe = PeerProbe::new(&tcp)?;
    #[cfg(feature = "tls")]
    if let Some(tls) = &config.tls {
        let handshake = async {
            // A port serving Redis without TLS reads the TLS greeting as the start of an
            // inline command and waits for its end: nothing ever comes back. Once the
            // handshake is slower than that port would answer, it is asked in plain text.
            // A port that answers is given a grace to finish the handshake all the same.
            tokio::select! {
                stream = tls.connect(host, tcp) => stream,
                () = plain_redis_answers(host, port, config) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server speaks Redis without TLS on this port (it answered a plain \
                     PING, not the TLS handshake); use redis://",
                )),
            }
        };
        let stream = match deadline {
            None => handshake.await?,
            // Polled before the caller's own timeout at the same instant, so this one names it.
            Some(deadline) => tokio::time::timeout_at(deadline.into(), handshake)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the server did not answer the TLS handshake within the connect \
                         timeout; if this port serves Redis without TLS, use redis://",
                    )
                })??,
        };
        return Ok((Box::new(stream), probe));
    }
    Ok((Box::new(tcp), probe))
}

/// How long a TLS handshake may take before the port is asked whether it serves plain Redis.
#[cfg(feature = "tls")]
const PLAIN_CHECK_AFTER: Duration = Duration::from_millis(150);

/// The least time a TLS handshake is still given once the port has answered a plain `PING`,
/// and how many of that `PING`'s round trips: a port may serve both (a protocol-sniffing
/// proxy, a managed Redis moving to TLS), and its handshake then ends in a few round trips.
#[cfg(feature = "tls")]
const PLAIN_GRACE: Duration = Duration::from_millis(500);
#[cfg(feature = "tls")]
const PLAIN_GRACE_ROUND_TRIPS: u32 = 20;

/// Completes if `host:port`, asked `PING` in plain text on a connection of its own, answers
/// as Redis does (`+PONG`, or an error line such as `-NOAUTH`), and the TLS handshake still
/// has not ended a grace period later; never completes otherwise. A TLS port answers with an
/// alert record or closes, which never begins with `+` or `-`.
#[cfg(feature = "tls")]
async fn plain_redis_answers(host: &str, port: u16, config: &Config) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::sleep(PLAIN_CHECK_AFTER).await;
    let answered = async {
        let mut tcp = connect_tcp(host, port, config).await.ok()?;
        let asked = Instant::now();
        tcp.write_all(b"PING\r\n").await.ok()?;
        let mut reply = [0; 64];
        let read = tcp.read(&mut reply).await.ok()?;
        let round_trip = asked.elapsed();
        let line = &reply[..read];
        let redis_like = matches!(line.first(), Some(b'+' | b'-'))
            && line.contains(&b'\n')
            && line
                .iter()
                .all(|&b| b.is_ascii_graphic() || b" \r\n".contains(&b));
        redis_like.then_some(round_trip)
    };
    match answered.await {
        Some(round_trip) => {
            let grace = PLAIN_GRACE.max(round_trip.saturating_mul(PLAIN_GRACE_ROUND_TRIPS));
            tokio::time::sleep(grace).await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Opens a TCP connection to `host:port` with the socket options from `config`. The host name
/// is resolved on every call, so a DNS change (a managed Redis failing over) is followed by
/// the next connect. With several addresses, attempts are started [`ATTEMPT_DELAY`] apart
/// (or as soon as the previous one fails) and the first to connect wins. The caller bounds
/// the whole attempt with the connect timeout.
pub(crate) async fn connect_tcp(host: &str, port: u16, config: &Config) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        ));
    }
    connect_any(addrs, SocketOptions::from(config)).await
}

/// Races `addrs` as [`connect_tcp`] describes; `addrs` is not empty.
async fn connect_any(addrs: Vec<SocketAddr>, options: SocketOptions) -> io::Result<TcpStream> {
    let mut addrs = addrs.into_iter();
    let Some(first) = addrs.next() else {
        return Err(io::Error::other("no address to connect to"));
    };
    let mut attempts = JoinSet::new();
    attempts.spawn(connect_addr(first, options));
    let mut last_error = None;
    loop {
        let next_due = tokio::time::sleep(ATTEMPT_DELAY);
        tokio::select! {
            Some(joined) = attempts.join_next() => match joined {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => last_error = Some(e),
                Err(e) => last_error = Some(io::Error::other(e)),
            },
            () = next_due, if addrs.len() > 0 => {}
        }
        // A failure, or the delay passed: start the next address, if any.
        match addrs.next() {
            Some(addr) => {
                attempts.spawn(connect_addr(addr, options));
            }
            None if attempts.is_empty() => {
                return Err(last_error.unwrap_or_else(|| io::Error::other("no address connected")));
            }
            None => {}
        }
    }
}

/// The per-socket settings, copied out of the config so each attempt can own them.
#[derive(Debug, Clone, Copy)]
struct SocketOptions {
    keepalive: Option<crate::config::Keepalive>,
    tcp_user_timeout: Option<Duration>,
}

impl From<&Config> for SocketOptions {
    fn from(config: &Config) -> Self {
        Self {
            keepalive: config.keepalive(),
            tcp_user_timeout: config.tcp_user_timeout(),
        }
    }
}

async fn connect_addr(addr: SocketAddr, options: SocketOptions) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    apply_socket_options(&SockRef::from(&socket), options)?;
    socket.connect(addr).await
}

/// Applies `config`'s socket options to `socket`, as every connect does: lets the config tests
/// ask the kernel whether it accepts them.
#[cfg(test)]
pub(crate) fn apply_socket_options_for_test(socket: &TcpSocket, config: &Config) -> io::Result<()> {
    apply_socket_options(&SockRef::from(socket), SocketOptions::from(config))
}

fn apply_socket_options(socket: &SockRef<'_>, options: SocketOptions) -> io::Result<()> {
    if let Some(k) = options.keepalive {
        let keepalive = TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval);
        #[cfg(not(windows))]
        let keepalive = keepalive.with_retries(k.retries);
        socket.set_keepalive(true)?;
        socket.set_tcp_keepalive(&keepalive)?;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(timeout) = options.tcp_user_timeout {
        socket.set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn peer_close_is_recorded_as_eof() {
        let (client, mut server) = tokio::io::duplex(64);
        let health = Arc::new(LinkHealth::default());
        let mut stream = TrackedStream::new(client, health.clone(), 1024);
        server.write_all(b"+PONG\r\n").await.unwrap();
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await.unwrap();
        assert!(health.is_open(), "data is not a close");
        drop(server);
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        assert_eq!(health.state(), LinkState::Eof);
    }

    #[test]
    fn an_error_line_then_a_close_is_why_the_connect_failed() {
        let health = LinkHealth::default();
        health.capture(b"-ERR max number of clients reached\r\n");
        assert_eq!(
            health.turned_away(b""),
            None,
            "still open: a reply, not a refusal"
        );
        health.close(LinkState::Eof);
        assert_eq!(
            health.turned_away(b"").as_deref(),
            Some("ERR max number of clients reached")
        );
        let unread = LinkHealth::default();
        assert_eq!(
            unread
                .turned_away(b"-DENIED protected\x07 mode\r\n")
                .as_deref(),
            Some("DENIED protected? mode")
        );
        assert_eq!(unread.turned_away(b"+OK\r\n"), None);
        assert_eq!(unread.turned_away(b"-ERR cut"), None, "an unfinished line");
        let replied = LinkHealth::default();
        replied.capture(b"-ERR unknown subcommand 'SETINFO'.\r\n");
        replied.close(LinkState::Eof);
        assert_eq!(
            replied.turned_away(b""),
            None,
            "an error reply, then a kill"
        );
    }

    #[test]
    fn first_close_reason_wins() {
        let health = LinkHealth::default();
        health.close(LinkState::Failed);
        health.close(LinkState::DriverEnded);
        assert_eq!(health.state(), LinkState::Failed);
    }

    #[tokio::test]
    async fn probe_sees_a_reset_before_anyone_reads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let probe = PeerProbe::new(&client).unwrap();
        assert!(!probe.peer_closed(), "an open, silent socket is not closed");
        SockRef::from(&server)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(server);
        let mut closed = false;
        for _ in 0..1000 {
            closed = probe.peer_closed();
            if closed {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(closed);
    }

    /// A listener whose accept queue is full drops new SYNs: a black-holed address on loopback.
    fn black_hole() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(0).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        // Fill the queue; the kernel may complete one or two handshakes before it drops SYNs.
        let fillers = (0..3)
            .filter_map(|_| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.connect_timeout(&addr.into(), Duration::from_millis(100))
                    .ok()
                    .map(|()| s.into())
            })
            .collect();
        (listener, fillers)
    }

    #[tokio::test]
    async fn a_black_holed_address_does_not_hide_a_live_one() {
        let (dead, _fillers) = black_hole();
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = SocketOptions {
            keepalive: None,
            tcp_user_timeout: None,
        };
        let started = std::time::Instant::now();
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            connect_any(
                vec![dead.local_addr().unwrap(), live.local_addr().unwrap()],
                options,
            ),
        )
        .await
        .expect("the live address connected")
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), live.local_addr().unwrap());
        let took = started.elapsed();
        assert!(
            took >= ATTEMPT_DELAY && took < ATTEMPT_DELAY * 3,
            "the second address started after the attempt delay, took {took:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_address_moves_on_at_once() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = SocketOptions {
            keepalive: None,
            tcp_user_timeout: None,
        };
        let started = std::time::Instant::now();
        let stream = connect_any(vec![closed_addr, live.local_addr().unwrap()], options)
            .await
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), live.local_addr().unwrap());
        assert!(started.elapsed() < ATTEMPT_DELAY, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn socket_options_are_applied() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = Config::builder("redis://127.0.0.1").build().unwrap();
        let stream = connect_tcp("127.0.0.1", port, &config).await.unwrap();
        let sock = SockRef::from(&stream);
        assert!(stream.nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        {
            assert_eq!(
                sock.tcp_keepalive_time().unwrap(),
                config.keepalive().unwrap().idle
            );
            assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
            assert_eq!(sock.tcp_user_timeout().unwrap(), config.tcp_user_timeout());
        }
    }
}
