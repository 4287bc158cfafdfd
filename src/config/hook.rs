//! The set-up hook ([`ConfigBuilder::on_connect`](super::ConfigBuilder::on_connect)) and the
//! connection it is handed.

use std::fmt;
use std::sync::Arc;

use redis::RedisFuture;
use redis::aio::ConnectionLike;

/// A set-up hook: see [`ConfigBuilder::on_connect`](super::ConfigBuilder::on_connect).
pub type ConnectHook =
    Arc<dyn for<'c> Fn(&'c mut SetUpConnection<'c>) -> RedisFuture<'c, ()> + Send + Sync>;

/// A new connection, handed to the [`on_connect`](super::ConfigBuilder::on_connect) hook
/// before it joins the pool. Send it commands as to any connection (`query_async`,
/// [`redis::AsyncCommands`]): they pass through the pool's own connection, so what they leave
/// set (a database, client tracking) becomes the connection's baseline, and a hook that
/// leaves a transaction open is refused.
///
/// ```no_run
/// use redis::AsyncCommands;
/// # async fn demo() -> Result<(), redis_guard::Error> {
/// let config = redis_guard::Config::builder("redis://127.0.0.1:6379")
///     .on_connect(|conn| {
///         Box::pin(async move {
///             tracing::debug!(connection_id = conn.connection_id(), "setting up");
///             conn.set::<_, _, ()>("last-connection", conn.connection_id()).await
///         })
///     })
///     .build()?;
/// let guard = redis_guard::RedisGuard::connect(config).await?;
/// # drop(guard); Ok(()) }
/// ```
pub struct SetUpConnection<'c> {
    conn: &'c mut (dyn ConnectionLike + Send + Sync),
    id: u64,
}

impl<'c> SetUpConnection<'c> {
    pub(crate) fn new(conn: &'c mut (dyn ConnectionLike + Send + Sync), id: u64) -> Self {
        Self { conn, id }
    }

    /// The number the connection will have in the pool, for logs: the same as
    /// [`GuardConnection::connection_id`](crate::GuardConnection::connection_id).
    pub fn connection_id(&self) -> u64 {
        self.id
    }
}

impl fmt::Debug for SetUpConnection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetUpConnection")
            .field("connection_id", &self.id)
            .finish_non_exhaustive()
    }
}

crate::delegate::delegate_connection_like!(impl<> SetUpConnection<'_>, conn);
