//! Opening a socket to Redis: address racing, socket options, TLS, and naming a port of the
//! other kind (plain Redis where TLS was asked).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use super::peer::PeerProbe;
use crate::config::Config;

/// How long one address of a host name gets before the next one is tried alongside it
/// (RFC 8305's "connection attempt delay"): a black-holed first address then costs 250 ms,
/// not the whole connect timeout, and a live address behind it still connects.
pub(super) const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

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
pub(super) async fn connect_tcp(host: &str, port: u16, config: &Config) -> io::Result<TcpStream> {
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
pub(super) async fn connect_any(
    addrs: Vec<SocketAddr>,
    options: SocketOptions,
) -> io::Result<TcpStream> {
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
pub(super) struct SocketOptions {
    pub(super) keepalive: Option<crate::config::Keepalive>,
    pub(super) tcp_user_timeout: Option<Duration>,
}

impl From<&Config> for SocketOptions {
    fn from(config: &Config) -> Self {
        Self {
            keepalive: config.keepalive(),
            tcp_user_timeout: config.tcp_user_timeout(),
        }
    }
}

pub(super) async fn connect_addr(
    addr: SocketAddr,
    options: SocketOptions,
) -> io::Result<TcpStream> {
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

pub(super) fn apply_socket_options(socket: &SockRef<'_>, options: SocketOptions) -> io::Result<()> {
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
