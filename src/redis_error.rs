//! What an error from redis-rs, or an error reply inside a pipeline, means for the pool: the
//! connection failed, or the server refused the command for its role. Read by type and by
//! Redis's error code, never by an error's text.

use redis::{ErrorKind, RedisError, Value};

use crate::metrics::ConnectErrorKind;

/// The error codes with which a server refuses commands it cannot take as the primary right
/// now: `READONLY` (it was demoted), `MASTERDOWN` (a replica lost its primary), `LOADING` (it
/// is loading its data).
fn is_role_code(code: &str) -> bool {
    matches!(code, "READONLY" | "MASTERDOWN" | "LOADING")
}

/// Whether an error means the connection (not the command) failed: the failures that poison
/// a connection.
pub(crate) fn is_infrastructure_failure(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Whether an error reply says the server cannot take commands as the primary right now (see
/// [`is_role_code`]). The command was refused before it ran, so sending it again elsewhere
/// cannot apply it twice.
pub(crate) fn is_refused_by_role(e: &RedisError) -> bool {
    e.code().is_some_and(is_role_code)
}

/// Whether an error reply says Redis is running a script or function past
/// `busy-reply-threshold`: it refuses every command (but `SCRIPT KILL`, `FUNCTION KILL`,
/// `SHUTDOWN NOSAVE`) until the script ends. The command did not run, and the connection
/// works: Redis is unavailable for now, which is neither the command's error nor a failure
/// of the socket.
pub(crate) fn is_busy(e: &RedisError) -> bool {
    e.code().is_some_and(is_busy_code)
}

/// Whether an error code is that refusal (see [`is_busy`]).
pub(crate) fn is_busy_code(code: &str) -> bool {
    code == "BUSY"
}

/// Whether a reply in a pipeline is such a refusal (see [`is_refused_by_role`]).
pub(crate) fn is_role_refusal(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if is_role_code(e.code()))
}

/// The `kind` label of a failed connect attempt, in `redis_guard_connect_errors_total`.
pub(crate) fn connect_error_kind(e: &RedisError) -> ConnectErrorKind {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_refusals_are_known_by_their_code() {
        let readonly = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(is_refused_by_role(&readonly));
        let wrongtype = RedisError::from((redis::ErrorKind::Client, "WRONGTYPE"));
        assert!(!is_refused_by_role(&wrongtype));
        assert!(!is_infrastructure_failure(&wrongtype));
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_infrastructure_failure(&reset));
    }
}
