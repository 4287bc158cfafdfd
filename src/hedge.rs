//! Hedged reads: when a read has had no reply for longer than the pool's recent reads
//! take, it is sent again on another connection and the first answer wins.
//!
//! A frozen socket (a NAT or firewall dropping an idle mapping, a half-open link) answers
//! nothing, and a connection used within `validation_bypass` is not PINGed at checkout: the
//! read sent on it would wait its whole response timeout, and a retry could meet another
//! frozen socket. A read-only call may be sent twice, so the pool does not wait for the
//! timeout: once the read is late by the measure of the pool's own reads (a smoothed round
//! trip plus four deviations, as TCP sets its retransmission timer, with a floor of
//! `HEDGE_FLOOR` and a cap of `validation_timeout`), a second copy goes out on a connection
//! that has answered since the read was sent (others are proven first, or a new one is
//! opened), and the connection beaten by its copy is evicted.
//! In steady state the delay sits far out in the tail, and a budget (one hedge per
//! `HEDGE_COST` reads, a burst of `HEDGE_BURST` saved up) keeps hedges rare however loaded
//! the machine is. The measure and the budget are kept in `reply_times.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::RedisResult;

use crate::connection::{Call, Reply};
use crate::inner::PoolInner;
use crate::manager::Bb8Connection;

/// Which copy of a hedged read answered first.
pub(crate) enum Raced {
    /// The read as it was sent (also when it was never hedged, or its copy failed).
    Original(RedisResult<Reply>),
    /// The copy, with the connection that answered it: the checkout's own is late.
    Hedge(Reply, Bb8Connection),
}

/// Awaits `original`, the read `call` sent at `sent`; once it is `delay` late, sends a copy
/// on another connection from `pool` and returns the first answer. `delay` `None`: only
/// measures the read (too few were measured to know when one is late).
pub(crate) async fn race(
    pool: &Arc<PoolInner>,
    call: Call<'_>,
    mut original: Pin<&mut impl Future<Output = RedisResult<Reply>>>,
    sent: Instant,
    delay: Option<Duration>,
    shared_connection: bool,
) -> Raced {
    let core = &pool.core;
    let Some(delay) = delay else {
        let result = original.await;
        if result.is_ok() {
            core.read_replied(sent.elapsed());
        }
        return Raced::Original(result);
    };
    tokio::select! {
        biased;
        result = &mut original => {
            if result.is_ok() {
                core.read_replied(sent.elapsed());
            }
            return Raced::Original(result);
        }
        () = tokio::time::sleep(delay) => {}
    }
    let Some(_slot) = core.start_hedge(sent, !shared_connection) else {
        return Raced::Original(original.await);
    };
    tracing::debug!(pool = %core.name(), ?delay, "a read is late: sending it again on another connection");
    // The copy runs in a task of its own, owning its connection: if the original wins, the
    // copy still completes and its connection goes back to the pool clean.
    let (answered, answer) = tokio::sync::oneshot::channel();
    let copy = call.to_owned_call();
    let hedge_pool = pool.clone();
    tokio::spawn(async move {
        let Ok(mut conn) = hedge_pool.replacement_proven_since(Some(sent)).await else {
            return;
        };
        let result = copy.as_call().send(&mut conn).await;
        let _ = answered.send((result, conn));
    });
    tokio::select! {
        biased;
        result = &mut original => {
            core.hedged(false);
            if result.is_ok() {
                core.read_replied(sent.elapsed());
            }
            Raced::Original(result)
        }
        Ok((Ok(reply), conn)) = answer => {
            core.hedged(true);
            core.read_replied(sent.elapsed());
            Raced::Hedge(reply, conn)
        }
    }
}
