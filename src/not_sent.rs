//! Calls refused before any byte of them was written: a value carried inside the error, so
//! the decision to send one elsewhere is made on what happened, never on an error's text.

use std::fmt;
use std::io;

use redis::RedisError;

/// Why a call was never sent. Sending it elsewhere cannot apply it twice, writes included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotSent {
    /// Its connection leads to a primary Sentinel has since demoted.
    PrimaryMoved,
    /// Its connection failed (EOF, reset) before the driver wrote any of it.
    ConnectionFailed,
}

impl NotSent {
    /// The error a caller sees if the call cannot be sent elsewhere: an I/O error (it says
    /// Redis could not be reached, a `503`), carrying `self` for [`NotSent::of`].
    pub(crate) fn error(self, cause: impl fmt::Display) -> RedisError {
        let kind = match self {
            NotSent::PrimaryMoved => io::ErrorKind::NotConnected,
            NotSent::ConnectionFailed => io::ErrorKind::BrokenPipe,
        };
        let described = NotSentError {
            why: self,
            cause: cause.to_string(),
        };
        RedisError::from(io::Error::new(kind, described))
    }

    /// The reason `error` carries, if it is a call's that was never sent.
    pub(crate) fn of(error: &RedisError) -> Option<NotSent> {
        crate::cause::io_cause::<NotSentError>(error).map(|e| e.why)
    }

    /// For the retry's log line.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            NotSent::PrimaryMoved => "the primary moved",
            NotSent::ConnectionFailed => "its connection failed before the call was written",
        }
    }
}

#[derive(Debug)]
struct NotSentError {
    why: NotSent,
    cause: String,
}

impl fmt::Display for NotSentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.why {
            NotSent::PrimaryMoved => write!(f, "not sent: the primary moved ({})", self.cause),
            NotSent::ConnectionFailed => write!(
                f,
                "not sent: the connection failed before the call was written ({})",
                self.cause
            ),
        }
    }
}

impl std::error::Error for NotSentError {}

/// The cause a call's error carries when no connection could be had for it (the checkout's
/// error: unavailable, timed out). Nothing was sent, and it is not sent elsewhere either:
/// the pool has no connection to give.
#[derive(Debug)]
pub(crate) struct NoConnection(String);

impl NoConnection {
    /// An I/O error (a `503`, like a connection failure), carrying the checkout's error.
    pub(crate) fn error(checkout_error: impl fmt::Display) -> RedisError {
        RedisError::from(io::Error::other(NoConnection(checkout_error.to_string())))
    }

    pub(crate) fn is_cause_of(error: &RedisError) -> bool {
        crate::cause::io_cause::<NoConnection>(error).is_some()
    }
}

impl fmt::Display for NoConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoConnection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_travels_with_the_error_whatever_its_text() {
        for why in [NotSent::PrimaryMoved, NotSent::ConnectionFailed] {
            let error = why.error("not sent: the primary moved");
            assert_eq!(NotSent::of(&error), Some(why));
            assert!(
                error.is_io_error(),
                "judged as a failed connection: {error}"
            );
        }
        let lookalike = RedisError::from(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "not sent: the connection failed before the call was written",
        ));
        assert_eq!(NotSent::of(&lookalike), None, "text proves nothing");
    }

    #[test]
    fn a_call_refused_for_a_failover_answers_503() {
        let error = crate::Error::Redis(NotSent::PrimaryMoved.error("Sentinel failover"));
        assert_eq!(error.status(), 503);
        assert!(error.is_infrastructure());
    }

    #[test]
    fn a_call_without_a_connection_was_not_applied() {
        let error = crate::Error::Redis(NoConnection::error("checkout timed out"));
        assert_eq!(error.to_string(), "checkout timed out");
        assert!(!error.may_have_been_applied());
        assert_eq!(
            NotSent::of(match &error {
                crate::Error::Redis(e) => e,
                _ => unreachable!(),
            }),
            None,
            "not sent again either"
        );
        let unsent = crate::Error::Redis(NotSent::ConnectionFailed.error("reset"));
        assert!(!unsent.may_have_been_applied());
        let timed_out = crate::Error::Redis(redis::RedisError::from(io::Error::from(
            io::ErrorKind::TimedOut,
        )));
        assert!(timed_out.may_have_been_applied(), "written, then no reply");
    }
}
