//! Following the sentinels' announcements for the pool's lifetime, and the trait through
//! which the watch reports to its pool.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;
use redis::{PushKind, RedisError};

use super::events::{self, Event};
use super::{PoolSettings, PrimaryAddr, SentinelWatch};
use crate::sanitize::server_text;

/// The pool a Sentinel watch serves, as the watch sees it: its settings and lifecycle, and
/// what the watch reports (the primary moved, a failover began or was aborted). The pool's
/// state implements it and decides what a move means for its connections and its breaker.
pub(crate) trait WatchedPool: PoolSettings {
    fn is_closing(&self) -> bool;
    /// Completes when the pool closes.
    fn closed(&self) -> impl Future<Output = ()> + Send;
    /// The primary moved from `old` to `new`.
    fn primary_moved(&self, old: &PrimaryAddr, new: &PrimaryAddr);
    /// A failover of the primary began: writes wait for its end, for [`WRITE_HOLD_CAP`](super::WRITE_HOLD_CAP) at
    /// most.
    fn hold_writes(&self);
    /// The failover ended without a move, or writes may go on for another reason.
    fn release_writes(&self, why: &str);
}

/// Keeps a subscription to `+switch-master` on every sentinel until the pool closes: the
/// sentinel that led the failover announces it first, the others only once they hear of it
/// (up to seconds later), and any of them may be down.
pub(crate) async fn follow(pool: Arc<impl WatchedPool>) {
    let Some(watch) = pool.sentinel() else {
        return;
    };
    let count = watch.sentinel.sentinels.len();
    let followers = (0..count).map(|i| {
        let pool = &*pool;
        async move {
            let interval = pool.config().probe_interval();
            while !pool.is_closing() {
                subscribe_and_listen(pool, watch, i).await;
                // Subscribed again after a pause: a sentinel that is down is not hammered.
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = pool.closed() => return,
                }
            }
        }
    });
    join_all(followers).await;
}

/// Subscribes on sentinel `i` and follows its announcements, polling every `probe_interval`,
/// until the connection fails or stops answering.
async fn subscribe_and_listen(pool: &impl WatchedPool, watch: &SentinelWatch, i: usize) {
    let config = pool.config();
    let (pushes, mut announcements) = tokio::sync::mpsc::unbounded_channel();
    let subscribed = async {
        let mut conn = watch.open(i, config, Some(pushes)).await?;
        conn.subscribe(events::channels()).await?;
        Ok::<_, RedisError>(conn)
    };
    let mut conn = match tokio::time::timeout(config.connect_timeout(), subscribed).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(pool = %pool.name(), sentinel = %watch.name_of(i), error = %server_text(&e), "cannot subscribe to the sentinel");
            return;
        }
        Err(_) => return,
    };
    tracing::debug!(pool = %pool.name(), sentinel = %watch.name_of(i), "following the sentinel's announcements");
    watch.lock_links()[i] = Some(conn.clone());
    let interval = config.probe_interval();
    // A failover announced while nobody listened is caught by this first poll.
    let mut poll_now = true;
    loop {
        if poll_now {
            match tokio::time::timeout(pool.validation_timeout(), watch.ask(&mut conn)).await {
                Ok(Ok(Some((addr, epoch)))) => {
                    if watch.admits(&addr, pool) {
                        watch.learn(addr, epoch, pool);
                    }
                }
                Ok(Ok(None)) => {}
                _ => break,
            }
        }
        poll_now = tokio::select! {
            push = announcements.recv() => match push {
                Some(push) if push.kind == PushKind::Disconnection => break,
                Some(push) => match events::event_for(&push, &watch.sentinel.master_name) {
                    Some(Event::Switched(addr)) => {
                        if watch.admits(&addr, pool) {
                            watch.announced(addr, pool);
                        }
                        // Learn the new epoch from the same sentinel.
                        true
                    }
                    Some(Event::FailoverBegins) => {
                        pool.hold_writes();
                        false
                    }
                    Some(Event::FailoverAborted) => {
                        pool.release_writes("the failover was aborted");
                        false
                    }
                    None => false,
                },
                None => break,
            },
            () = tokio::time::sleep(interval) => true,
            () = watch.recheck.notified() => true,
            () = pool.closed() => break,
        };
    }
    watch.lock_links()[i] = None;
}
