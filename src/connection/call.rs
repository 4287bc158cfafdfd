//! One call on a connection: what redis-rs hands over, how it is sent and awaited, its span,
//! and `ConnectionLike` for [`GuardConnection`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tracing::Instrument;

use super::{GuardConnection, Owner, Server, unless_never_written};
use crate::command;
use crate::redis_error::{is_infrastructure_failure, is_role_refusal};

/// One call as redis-rs hands it over: a command, or a pipeline's slice of replies.
#[derive(Clone, Copy)]
pub(crate) enum Call<'a> {
    One(&'a Cmd),
    Many(&'a Pipeline, usize, usize),
}

/// A [`Call`] that owns its commands, for a copy sent from a task of its own (a hedge).
pub(crate) enum OwnedCall {
    One(Cmd),
    Many(Pipeline, usize, usize),
}

impl OwnedCall {
    pub(crate) fn as_call(&self) -> Call<'_> {
        match self {
            OwnedCall::One(cmd) => Call::One(cmd),
            OwnedCall::Many(pipeline, offset, count) => Call::Many(pipeline, *offset, *count),
        }
    }
}

/// The reply to a [`Call`].
pub(crate) enum Reply {
    One(Value),
    Many(Vec<Value>),
}

impl<'a> Call<'a> {
    /// A copy that owns its commands.
    pub(crate) fn to_owned_call(self) -> OwnedCall {
        match self {
            Call::One(cmd) => OwnedCall::One(cmd.clone()),
            Call::Many(pipeline, offset, count) => OwnedCall::Many(pipeline.clone(), offset, count),
        }
    }

    /// Whether any of its commands blocks on the server (`BLPOP`, `WAIT`, ...).
    pub(crate) fn blocks(&self) -> bool {
        self.cmds().any(|cmd| command::server_wait(cmd).is_some())
    }

    /// Its commands, without allocating: this runs for every call in shared mode.
    pub(crate) fn cmds(&self) -> impl Iterator<Item = &'a Cmd> + 'a {
        let (one, many) = match *self {
            Call::One(cmd) => (Some(cmd), None),
            Call::Many(pipeline, ..) => (None, Some(pipeline.cmd_iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Sends the call on a pooled connection, which judges its outcome.
    pub(crate) async fn send(self, conn: &mut GuardConnection) -> RedisResult<Reply> {
        match self {
            Call::One(cmd) => conn.send_one(cmd).await.map(Reply::One),
            Call::Many(pipeline, offset, count) => conn
                .send_many(pipeline, offset, count)
                .await
                .map(Reply::Many),
        }
    }

    /// Sends the call on a multiplexed handle; an error reply to a single command becomes the
    /// error it is, as on a pooled connection.
    pub(crate) async fn send_multiplexed(
        self,
        handle: &mut MultiplexedConnection,
    ) -> RedisResult<Reply> {
        match self {
            Call::One(cmd) => match handle.send_packed_command(cmd).await {
                Ok(Value::ServerError(e)) => Err(RedisError::from(e)),
                other => other.map(Reply::One),
            },
            Call::Many(pipeline, offset, count) => handle
                .send_packed_commands(pipeline, offset, count)
                .await
                .map(Reply::Many),
        }
    }

    /// The span of this call on a connection.
    pub(crate) fn operation(&self) -> (command::OperationName<'a>, Option<usize>) {
        match *self {
            Call::One(cmd) => (command::OperationName::of(cmd), None),
            Call::Many(pipeline, _, count) => (
                command::OperationName(Some(pipeline_operation(pipeline).as_bytes())),
                Some(count),
            ),
        }
    }
}

impl Reply {
    /// Whether a pipeline's replies hold a refusal for the server's role.
    pub(crate) fn refused_by_role(&self) -> bool {
        matches!(self, Reply::Many(values) if values.iter().any(is_role_refusal))
    }
}

impl GuardConnection {
    /// Sets the reply wait this call needs: the checkout's response timeout, plus what
    /// blocking commands may wait on the server. Returns whether any blocks.
    fn set_reply_wait<'c>(&mut self, cmds: impl Iterator<Item = &'c Cmd>) -> bool {
        let server_wait: Duration = cmds.filter_map(command::server_wait).sum();
        self.handle
            .set_response_timeout(self.response_timeout.saturating_add(server_wait));
        !server_wait.is_zero()
    }
}

/// Awaits a call sent at `sent` on an existing connection, and tells the pool when its reply
/// is overdue (no reply within `validation_timeout`, so a fresh connect verifies Redis early)
/// and when it timed out: the evidence the breaker's unresponsive rule weighs (see
/// `Owner::call_timed_out`). A blocking command waits on the server by design: only its
/// timeout counts.
///
/// The call is pinned by the caller: moved in, it would take its room in this future twice.
pub(crate) async fn watched<T>(
    pool: &dyn Owner,
    sent: Instant,
    blocking: bool,
    mut call: Pin<&mut impl Future<Output = RedisResult<T>>>,
) -> RedisResult<T> {
    let result = if blocking {
        call.await
    } else {
        let overdue = tokio::time::sleep(pool.validation_timeout());
        tokio::select! {
            biased;
            result = &mut call => result,
            () = overdue => {
                pool.reply_overdue(sent);
                call.await
            }
        }
    };
    if let Err(e) = &result
        && e.is_timeout()
    {
        pool.call_timed_out(sent);
    }
    result
}

impl GuardConnection {
    fn call_span(&self, operation: &dyn fmt::Display, batch: Option<usize>) -> tracing::Span {
        call_span(
            &*self.pool,
            &self.server,
            self.id,
            self.handle.get_db(),
            operation,
            batch,
        )
    }
}

/// A span per call, after OpenTelemetry's database conventions: the operation's name and the
/// server, never a key or value. Free when no subscriber wants DEBUG spans.
pub(crate) fn call_span(
    pool: &dyn Owner,
    server: &Server,
    connection_id: u64,
    db: i64,
    operation: &dyn fmt::Display,
    batch: Option<usize>,
) -> tracing::Span {
    tracing::debug_span!(
        "redis.command",
        otel.name = %operation,
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = %operation,
        db.operation.batch.size = batch,
        db.namespace = db,
        server.address = %server.address,
        server.port = server.port,
        redis_guard.pool = %pool.name(),
        redis_guard.connection_id = connection_id,
    )
}

/// The operation name of a pipeline's span.
pub(crate) fn pipeline_operation(pipeline: &Pipeline) -> &'static str {
    if pipeline.is_transaction() {
        "MULTI"
    } else {
        "PIPELINE"
    }
}

impl GuardConnection {
    /// Sends one command and judges its outcome. The pool's checkouts await this in place;
    /// [`ConnectionLike`] boxes it (redis-rs's interface), and a checkout's own call future,
    /// boxed already, would otherwise allocate a second one on every call.
    pub(crate) async fn send_one(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let span = self.call_span(&command::OperationName::of(cmd), None);
        async move {
            self.refuse_if_demoted()?;
            self.refuse_if_closed()?;
            let blocking = self.set_reply_wait(std::iter::once(cmd));
            self.in_flight = true;
            let written = self.link.written();
            let sent = Instant::now();
            let replied = {
                let call = std::pin::pin!(self.handle.send_packed_command(cmd));
                watched(&*self.pool, sent, blocking, call).await
            };
            let result = match replied {
                // An error reply, as the error it is (redis-rs's query_async would make it one
                // anyway): so it is judged here like any failure.
                Ok(Value::ServerError(e)) => Err(RedisError::from(e)),
                other => other,
            };
            self.in_flight = false;
            // An error reply is an `Err` here: a refusal is never inside a value.
            self.note_outcome(&result, |_| false);
            match &result {
                Ok(reply) => self.session.apply(cmd, reply),
                Err(e) if !is_infrastructure_failure(e) => self.session.apply_failed(cmd),
                Err(_) => {}
            }
            unless_never_written(&self.link, written, result)
        }
        .instrument(span)
        .await
    }

    /// Sends `count` commands of `pipeline` from `offset` and judges their outcome: see
    /// [`send_one`](Self::send_one).
    pub(crate) async fn send_many(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let span = self.call_span(&pipeline_operation(pipeline), Some(count));
        async move {
            self.refuse_if_demoted()?;
            self.refuse_if_closed()?;
            let blocking = self.set_reply_wait(pipeline.cmd_iter());
            self.in_flight = true;
            let written = self.link.written();
            let sent = Instant::now();
            let result = {
                let call =
                    std::pin::pin!(self.handle.send_packed_commands(pipeline, offset, count));
                watched(&*self.pool, sent, blocking, call).await
            };
            self.in_flight = false;
            self.note_outcome(&result, |values| values.iter().any(is_role_refusal));
            match &result {
                Ok(replies) => self.session.apply_pipeline(pipeline, replies),
                Err(e) if !is_infrastructure_failure(e) => {
                    self.session.apply_failed_pipeline(pipeline, e)
                }
                Err(_) => {}
            }
            unless_never_written(&self.link, written, result)
        }
        .instrument(span)
        .await
    }
}

impl ConnectionLike for GuardConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.send_one(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.send_many(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.handle.get_db()
    }
}
