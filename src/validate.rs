//! Validation: a connection is proven alive (a PING, and `ROLE` where its role is in doubt)
//! before a checkout hands it out, in both modes; one that fails is evicted. What is validated
//! and when is the checkout's decision (`inner/`, `multiplexed.rs`).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use crate::connection::ValidationFailure;
use crate::manager::Bb8Connection;
use crate::metrics::{EvictionReason, ValidationResult};
use crate::pool_core::PoolCore;
use crate::sanitize::server_text;

/// What a validation found out about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validated {
    /// It answered: hand it out.
    Alive,
    /// It failed, and was evicted.
    Dead,
    /// No answer within a timeout that the checkout's budget cut below the pool's own: that
    /// says nothing about the connection (the budget may have left less than a round trip),
    /// so it is kept, still to be validated by the next checkout, and the checkout times out.
    Unknown,
}

/// Validates `conn` within the pool's validation timeout, or what is left before `deadline`
/// (a checkout's budget) if that is less, counting the outcome; a connection that fails is
/// evicted.
pub(crate) async fn validate(
    conn: &mut Bb8Connection,
    core: &PoolCore,
    deadline: Option<Instant>,
) -> Validated {
    let timeout = core.validation_timeout();
    let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
    let cut_short = left.is_some_and(|left| left < timeout);
    // Boxed: the PING and its role check would otherwise take room in every checkout's
    // future, and a hot checkout, which needs neither, would copy it around.
    match Box::pin(conn.validate(left.map_or(timeout, |left| left.min(timeout)))).await {
        Ok(()) => {
            core.validated(ValidationResult::Passed);
            Validated::Alive
        }
        Err(ValidationFailure::TimedOut(after)) if cut_short => {
            tracing::debug!(
                connection_id = conn.connection_id(),
                ?after,
                "validation cut short by the checkout budget; connection kept"
            );
            Validated::Unknown
        }
        Err(failure) => {
            core.validated(ValidationResult::Failed);
            tracing::debug!(connection_id = conn.connection_id(), failure = %server_text(&failure), "validation failed");
            conn.evict(eviction_reason(&failure));
            Validated::Dead
        }
    }
}

/// Validates a suspect connection while the caller moves on: a live one goes back to the
/// pool, a dead one is evicted. It holds its pool slot and a permit meanwhile, for at most the
/// validation timeout.
pub(crate) async fn validate_in_background(
    mut conn: Bb8Connection,
    _permit: OwnedSemaphorePermit,
    core: Arc<PoolCore>,
) {
    validate(&mut conn, &core, None).await;
}

/// What a failed validation evicts a connection as.
fn eviction_reason(failure: &ValidationFailure) -> EvictionReason {
    match failure {
        ValidationFailure::NotPrimary(_) => EvictionReason::RoleChange,
        _ => EvictionReason::ValidationFailed,
    }
}
