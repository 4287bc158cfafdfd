//! What a call's result says about its connection, and what an eviction is called.

use redis::{RedisResult, Value};

use crate::metrics::EvictionReason;
use crate::not_sent::NotSent;
use crate::redis_error::{is_busy, is_infrastructure_failure, is_refused_by_role};
use crate::transport::{LinkHealth, LinkState};

/// What a call's result says about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An I/O error, a reset or a response timeout: the connection failed, not the command.
    ConnectionFailed,
    /// A reply exceeded `max_reply_size`, and its connection's read failed: the connection
    /// is lost, but neither it nor Redis is at fault.
    ReplyTooLarge,
    /// The server cannot take commands as the primary (`READONLY`, ...), over a working socket.
    RefusedByRole,
    /// A pipeline's replies, one of them a refusal for the server's role: the connection
    /// served, on a server that is no longer the primary.
    PartlyRefusedByRole,
    /// `BUSY`: Redis is running a script and refuses commands until it ends, over a working
    /// socket.
    Busy,
    /// A reply, or an error reply (`WRONGTYPE`, `NOSCRIPT`, ...): it travelled a working socket.
    Answered,
}

/// What an [`Outcome`] does to its connection: the one rule both modes apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Consequence {
    /// Redis answered on it: proof of life for the connection and the pool.
    pub(crate) answered: bool,
    /// It served a call, so a later failure on it is a socket that died in use.
    pub(crate) served: bool,
    /// What answered was a refusal for a script running (`BUSY`).
    pub(crate) busy: bool,
    /// It is given up, and why.
    pub(crate) evict: Option<EvictionReason>,
}

impl Outcome {
    /// What `result`, of a call on the connection whose socket is `link`, says about it;
    /// `refused_in` finds a refusal for the server's role among a reply's values. Every call
    /// that fails because a reply on its connection was too large (the one whose reply it
    /// was, and the others in flight on a shared connection) is judged alike.
    pub(crate) fn judge<T>(
        result: &RedisResult<T>,
        link: &LinkHealth,
        refused_in: impl FnOnce(&T) -> bool,
    ) -> Outcome {
        match result {
            Err(e) if is_infrastructure_failure(e) && link.state() == LinkState::ReplyTooLarge => {
                Outcome::ReplyTooLarge
            }
            Err(e) if is_infrastructure_failure(e) => Outcome::ConnectionFailed,
            Err(e) if is_refused_by_role(e) => Outcome::RefusedByRole,
            Err(e) if is_busy(e) => Outcome::Busy,
            Ok(reply) if refused_in(reply) => Outcome::PartlyRefusedByRole,
            _ => Outcome::Answered,
        }
    }

    /// What this outcome does to its connection. `demoted`: whether the primary moved away
    /// from it, asked only when its socket failed (the move shut it, so the eviction is a
    /// role change, not an I/O error).
    pub(crate) fn consequence(self, demoted: impl FnOnce() -> bool) -> Consequence {
        let given_up = |reason| Consequence {
            answered: false,
            served: false,
            busy: false,
            evict: Some(reason),
        };
        let answered = |served, busy, evict| Consequence {
            answered: true,
            served,
            busy,
            evict,
        };
        match self {
            Outcome::ConnectionFailed if demoted() => given_up(EvictionReason::RoleChange),
            Outcome::ConnectionFailed => given_up(EvictionReason::IoError),
            Outcome::ReplyTooLarge => given_up(EvictionReason::ReplyTooLarge),
            Outcome::RefusedByRole => answered(false, false, Some(EvictionReason::RoleChange)),
            Outcome::PartlyRefusedByRole => answered(true, false, Some(EvictionReason::RoleChange)),
            Outcome::Busy => answered(true, true, None),
            Outcome::Answered => answered(true, false, None),
        }
    }
}

/// `result`, marked as never sent if its connection failed (EOF, reset: not a timeout, after
/// which the driver may still write) and the driver wrote nothing since `written_before`: the
/// failure came before any byte of the call reached the socket, so sending it elsewhere cannot
/// apply it twice. This covers a close that arrived after the checkout looked at the socket.
/// The error stays an I/O error, so it is judged as before wherever it is not resent.
pub(crate) fn unless_never_written<T>(
    link: &LinkHealth,
    written_before: u64,
    result: RedisResult<T>,
) -> RedisResult<T> {
    match result {
        Err(e)
            if (e.is_io_error() || e.is_connection_dropped())
                && !e.is_timeout()
                && link.state().is_failure()
                && link.written() == written_before =>
        {
            Err(NotSent::ConnectionFailed.error(e))
        }
        other => other,
    }
}

/// Why a connection whose socket closed on its own is evicted: it broke, or a reply on it
/// was too large (a push message, or the reply of a call since cancelled), which says nothing
/// about Redis.
pub(crate) fn closed_link_eviction(link: &LinkHealth) -> EvictionReason {
    match link.state() {
        LinkState::ReplyTooLarge => EvictionReason::ReplyTooLarge,
        _ => EvictionReason::Broken,
    }
}

/// Whether an error reply to a PING still proves the connection works: the ACL forbids `PING`
/// (`NOPERM`), or Redis is running a slow script (`BUSY`) and will serve again when it ends.
pub(super) fn proves_the_connection(code: &str) -> bool {
    matches!(code, "NOPERM" | "BUSY")
}

/// The error a reply carried, if any, for a log line.
pub(super) fn server_error(reply: RedisResult<Value>) -> Option<String> {
    match reply {
        Ok(Value::ServerError(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
        Ok(_) => None,
    }
}
