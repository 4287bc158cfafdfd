//! [`GuardManager`]: how bb8 opens, checks and retires redis-guard connections.

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ErrorKind, RedisError};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::connection::GuardConnection;
use crate::metrics::ConnectErrorKind;
use crate::shared::Shared;
use crate::transport::{self, LinkHealth, LinkState, PeerProbe, TrackedStream};

/// The `bb8::ManageConnection` behind a [`RedisGuard`](crate::RedisGuard).
///
/// Unlike bb8-redis's `RedisConnectionManager`, it opens the socket itself (keepalive,
/// `TCP_NODELAY`, `TCP_USER_TIMEOUT`, a connect timeout) and its `has_broken` really answers:
/// a connection whose socket closed, that failed a command, or that carries session state is
/// not put back. The pool, not bb8, validates at checkout, so that a recently used connection
/// skips the PING.
#[derive(Debug, Clone)]
pub struct GuardManager {
    shared: Arc<Shared>,
}

impl GuardManager {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn open(&self, id: u64) -> Result<GuardConnection, RedisError> {
        let config = &self.shared.config;
        let link = Arc::new(LinkHealth::default());
        match config.connection.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = transport::connect_tcp(host, *port, config).await?;
                let probe = PeerProbe::new(&stream)?;
                self.handshake(TrackedStream::new(stream, link.clone()), link, probe, id)
                    .await
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                let probe = PeerProbe::new(&stream)?;
                self.handshake(TrackedStream::new(stream, link.clone()), link, probe, id)
                    .await
            }
            _ => Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "unsupported address type",
            ))),
        }
    }

    /// Runs the Redis handshake (AUTH, SELECT, ...) and spawns the connection's driver, whose
    /// end marks the link closed.
    async fn handshake<S>(
        &self,
        stream: S,
        link: Arc<LinkHealth>,
        probe: PeerProbe,
        id: u64,
    ) -> Result<GuardConnection, RedisError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = &self.shared.config;
        let settings =
            AsyncConnectionConfig::new().set_response_timeout(Some(config.response_timeout));
        let (inner, driver) = MultiplexedConnection::new_with_config(
            config.connection.redis_settings(),
            stream,
            settings,
        )
        .await?;
        let driver_link = link.clone();
        let driver = tokio::spawn(async move {
            driver.await;
            driver_link.close(LinkState::DriverEnded);
        })
        .abort_handle();
        Ok(GuardConnection::new(
            inner,
            link,
            probe,
            self.shared.clone(),
            driver,
            id,
        ))
    }
}

impl GuardManager {
    /// Connects now, whatever happened before: the prober's and start-up's way in.
    pub(crate) async fn connect_now(&self) -> Result<GuardConnection, RedisError> {
        let id = self.shared.next_connection_id();
        let timeout = self.shared.config.connect_timeout;
        let result = match tokio::time::timeout(timeout, self.open(id)).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            ))),
        };
        match &result {
            Ok(_) => self.shared.record_connected(id),
            // Errors from our own sockets and handshakes never contain the URL or password.
            Err(e) => self
                .shared
                .record_connect_error(classify_connect_error(e), e.to_string()),
        }
        result
    }
}

impl bb8::ManageConnection for GuardManager {
    type Connection = GuardConnection;
    type Error = RedisError;

    /// bb8's connects (replenishing, or for a waiting checkout) hold back for a moment after a
    /// failure: they answer with that failure instead of hammering a Redis that just refused.
    async fn connect(&self) -> Result<GuardConnection, RedisError> {
        if let Some(cause) = self.shared.recent_connect_failure() {
            self.shared.connect_failed.notify_waiters();
            return Err(RedisError::from((
                ErrorKind::Io,
                "not reconnecting yet after a failed connect",
                cause,
            )));
        }
        self.connect_now().await
    }

    async fn is_valid(&self, conn: &mut GuardConnection) -> Result<(), RedisError> {
        conn.validate(self.shared.config.validation_timeout)
            .await
            .map_err(|reason| {
                RedisError::from((ErrorKind::Io, "validation failed", reason.to_string()))
            })
    }

    fn has_broken(&self, conn: &mut GuardConnection) -> bool {
        !conn.on_return()
    }
}

fn classify_connect_error(e: &RedisError) -> ConnectErrorKind {
    if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        ConnectErrorKind::Auth
    } else if e.is_timeout() {
        ConnectErrorKind::Timeout
    } else if e.is_connection_refusal() || e.is_connection_dropped() {
        ConnectErrorKind::Refused
    } else {
        ConnectErrorKind::Other
    }
}
