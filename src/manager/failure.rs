//! Why a connect failed, and what the failure says: its `kind` label, whether it counts
//! against Redis, whether a waiting checkout need wait for another attempt.

use redis::{ErrorKind, RedisError};

use crate::metrics::ConnectErrorKind;
use crate::redis_error::connect_error_kind;

/// The TLS failure `error` carries, in words, if any.
pub(super) fn tls_failure(error: &std::io::Error) -> Option<String> {
    #[cfg(feature = "tls")]
    return crate::tls::tls_failure(error);
    #[cfg(not(feature = "tls"))]
    {
        let _ = error;
        None
    }
}

/// Why a connect failed: TLS has no place in redis-rs's errors, so it is kept apart until the
/// failure is counted.
#[derive(Debug)]
pub(super) enum ConnectFailure {
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Tls(String),
    /// Redis answered, as a replica: the endpoint does not (yet) lead to the primary.
    Replica(String),
    /// Sentinel moved the primary while this connection was opened to the old one.
    Moved(String),
    /// No sentinel said where the primary is.
    Sentinel(ConnectErrorKind, String),
    /// Redis turned the connection away with this error line before any command (at
    /// `maxclients`, in protected mode).
    TurnedAway(String),
    Redis(RedisError),
}

impl From<RedisError> for ConnectFailure {
    fn from(e: RedisError) -> Self {
        ConnectFailure::Redis(e)
    }
}

impl From<ConnectFailure> for RedisError {
    fn from(failure: ConnectFailure) -> Self {
        match failure {
            ConnectFailure::Redis(e) => e,
            ConnectFailure::Tls(cause) => RedisError::from(std::io::Error::other(cause)),
            ConnectFailure::Replica(cause) => RedisError::from((
                ErrorKind::Client,
                "connected to a replica, not the primary",
                cause,
            )),
            ConnectFailure::Moved(cause) | ConnectFailure::Sentinel(_, cause) => {
                RedisError::from((ErrorKind::Client, "cannot find the primary", cause))
            }
            failure @ ConnectFailure::TurnedAway(_) => RedisError::from((
                ErrorKind::Io,
                "redis refused the connection",
                failure.to_string(),
            )),
        }
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Tls(cause)
            | ConnectFailure::Replica(cause)
            | ConnectFailure::Moved(cause)
            | ConnectFailure::Sentinel(_, cause) => f.write_str(cause),
            ConnectFailure::TurnedAway(line) if is_max_clients(line) => write!(
                f,
                "redis turned the connection away: {line} (raise maxclients on the server, or \
                 find the clients holding its connections)"
            ),
            ConnectFailure::TurnedAway(line) => {
                write!(f, "redis turned the connection away: {line}")
            }
            ConnectFailure::Redis(e) => e.fmt(f),
        }
    }
}

/// Whether Redis's accept-time error line says it is at `maxclients`.
fn is_max_clients(line: &str) -> bool {
    line.contains("max number of clients")
}

impl ConnectFailure {
    /// A TLS failure inside redis-rs's error, as a failure of its own (an alert its
    /// connection driver read is recorded by the link instead, where `open` finds it).
    pub(super) fn unwrap_tls(self) -> Self {
        #[cfg(feature = "tls")]
        if let ConnectFailure::Redis(e) = &self
            && let Some(cause) = crate::tls::tls_failure(e)
        {
            return ConnectFailure::Tls(cause);
        }
        self
    }

    pub(super) fn kind(&self) -> ConnectErrorKind {
        match self {
            ConnectFailure::Tls(_) => ConnectErrorKind::Tls,
            ConnectFailure::Replica(_) => ConnectErrorKind::Replica,
            ConnectFailure::Moved(_) => ConnectErrorKind::Other,
            ConnectFailure::Sentinel(kind, _) => *kind,
            ConnectFailure::TurnedAway(line) if is_max_clients(line) => {
                ConnectErrorKind::MaxClients
            }
            ConnectFailure::TurnedAway(_) => ConnectErrorKind::Other,
            // The line came back as the reply to the first set-up command (`AUTH`).
            ConnectFailure::Redis(e) if is_max_clients(&e.to_string()) => {
                ConnectErrorKind::MaxClients
            }
            ConnectFailure::Redis(e) => connect_error_kind(e),
        }
    }

    /// Whether the failure says Redis cannot be reached, for the breaker. A replica answering
    /// where the primary was (a DNS name that has not moved yet in a failover) is Redis
    /// reachable: opening the breaker then would fail reads too and take every pod out of
    /// the load balancer at once.
    pub(super) fn counts_against_redis(&self) -> bool {
        !matches!(self, ConnectFailure::Replica(_) | ConnectFailure::Moved(_))
    }

    /// Whether the failure says Redis cannot be had (refused, no answer, credentials or
    /// certificates refused), rather than that this one connection was cut while it was set
    /// up (a reset, an EOF: a `CLIENT KILL`, a middlebox), which the next attempt may not
    /// meet.
    pub(super) fn is_decisive(&self) -> bool {
        match self {
            ConnectFailure::Tls(_)
            | ConnectFailure::Replica(_)
            | ConnectFailure::Sentinel(..)
            | ConnectFailure::TurnedAway(_) => true,
            // The next attempt goes to the new primary.
            ConnectFailure::Moved(_) => false,
            ConnectFailure::Redis(e) => e.is_connection_refusal() || !e.is_connection_dropped(),
        }
    }
}
