//! What commands do to a connection's server-side state, applied in command order.
//!
//! A connection goes back to the pool only if its session is as it was when the connection
//! joined the pool (its baseline: database, tracking, read-only mode; whatever the set-up hook
//! established). `SELECT 9` then `SELECT 0` is clean again; `UNWATCH` then `WATCH k` is
//! watching; `WATCH k` then an atomic pipeline (`MULTI ... EXEC`) is clean. Commands queued
//! inside `MULTI` take effect at an `EXEC` that runs them, and are dropped by `DISCARD`, by an
//! `EXEC` refused (`EXECABORT`) and by one that answers nil (a watched key changed), as on the
//! server. `RESET` is never undone here: it also logs the connection out and drops its
//! protocol and name.
//!
//! Only completed calls are applied: a call cancelled before its reply evicts the connection
//! anyway (see `connection/`), and a call that failed on the wire poisons it.

use redis::{Cmd, Pipeline, RedisError, Value};

use crate::command::words;

/// The parts of a session a next user could trip over.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    db: i64,
    in_multi: bool,
    watching: bool,
    tracking: bool,
    readonly: bool,
    /// State that is never returned to the pool: a subscription, `MONITOR`, `CLIENT REPLY
    /// OFF`, another protocol or user, a changed client name.
    tainted: bool,
}

impl State {
    /// What a fresh connection (or `RESET`) has: database 0, nothing else.
    fn server_default() -> Self {
        State {
            db: 0,
            in_multi: false,
            watching: false,
            tracking: false,
            readonly: false,
            tainted: false,
        }
    }
}

/// One command's effect on the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    None,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Select(i64),
    Tracking(bool),
    Readonly(bool),
    Taint,
}

/// Whether `cmd` needs a connection of its own: it changes the session (`MULTI`, `WATCH`,
/// `SELECT`, a subscription, ...), so the commands after it depend on which connection they
/// are sent on, or it blocks (`BLPOP`, `XREAD BLOCK`, `WAIT`), which would hold up every
/// reply queued behind it on a shared one. Plain commands, and plain commands in an atomic
/// pipeline (sent as one `MULTI ... EXEC` write), do not.
pub(crate) fn needs_own_connection(cmd: &Cmd) -> bool {
    effect_of(cmd) != Effect::None || crate::command::server_wait(cmd).is_some()
}

/// A connection's session: where it started and where it is now.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    baseline: State,
    current: State,
    /// Effects queued inside `MULTI`, applied at `EXEC`.
    queued: Vec<Effect>,
}

impl Session {
    /// A session on database `db` (the one the URL selects).
    pub(crate) fn new(db: i64) -> Self {
        let state = State {
            db,
            ..State::server_default()
        };
        Session {
            baseline: state.clone(),
            current: state,
            queued: Vec::new(),
        }
    }

    /// Whether the session differs from its baseline: the connection must not be reused.
    pub(crate) fn is_dirty(&self) -> bool {
        self.current != self.baseline || !self.queued.is_empty()
    }

    /// Whether the current session may be a pooled connection's baseline: not inside a
    /// transaction or a watch, nothing that cannot be pooled.
    pub(crate) fn can_be_baseline(&self) -> bool {
        let s = &self.current;
        !s.in_multi && !s.watching && !s.tainted && self.queued.is_empty()
    }

    /// Makes the current session the baseline: what the set-up hook establishes is not dirt.
    pub(crate) fn adopt_as_baseline(&mut self) {
        self.baseline = self.current.clone();
    }

    /// Applies a completed single command; `reply` decides whether an `EXEC` ran its queue
    /// (a nil reply means a watched key changed and nothing ran).
    pub(crate) fn apply(&mut self, cmd: &Cmd, reply: &Value) {
        self.step(exec_outcome(effect_of(cmd), reply));
    }

    /// Applies a completed pipeline. `atomic` pipelines are wrapped in `MULTI ... EXEC`, and
    /// the transaction's reply (the last of `replies`) decides whether it ran. The others
    /// have one reply per command: a command answered with an error reply did nothing.
    pub(crate) fn apply_pipeline(&mut self, pipeline: &Pipeline, replies: &[Value]) {
        if pipeline.is_transaction() {
            self.step(Effect::Multi);
            for cmd in pipeline.cmd_iter() {
                self.step(effect_of(cmd));
            }
            let reply = replies.last().unwrap_or(&Value::Nil);
            self.step(exec_outcome(Effect::Exec, reply));
        } else if pipeline.cmd_iter().count() == replies.len() {
            for (cmd, reply) in pipeline.cmd_iter().zip(replies) {
                match reply {
                    Value::ServerError(_) => self.apply_failed(cmd),
                    reply => self.apply(cmd, reply),
                }
            }
        } else {
            self.unknown_outcome(pipeline);
        }
    }

    /// A single command answered with an error reply: it did nothing, except that `EXEC` and
    /// `DISCARD` end a transaction whatever they answer; an `EXEC` refused (`EXECABORT`) ran
    /// nothing of its queue.
    pub(crate) fn apply_failed(&mut self, cmd: &Cmd) {
        if let Effect::Exec | Effect::Discard = effect_of(cmd) {
            self.step(Effect::Discard);
        }
    }

    /// A pipeline failed with `error` rather than with replies. A transaction refused at
    /// `EXEC` (`EXECABORT`: a command was refused while queued, e.g. every write under
    /// `maxmemory` with `noeviction`) ran nothing, and ended like a `DISCARD`. Otherwise
    /// redis-rs does not say which commands ran.
    pub(crate) fn apply_failed_pipeline(&mut self, pipeline: &Pipeline, error: &RedisError) {
        let atomic = pipeline.is_transaction();
        if atomic && error.code() == Some("EXECABORT") {
            self.step(Effect::Multi);
            self.step(Effect::Discard);
        } else if atomic {
            self.current.tainted = true;
        } else {
            self.unknown_outcome(pipeline);
        }
    }

    /// Some of the pipeline's commands ran, which is not known: any that changes the session
    /// leaves it unknown, so the connection is not reused.
    fn unknown_outcome(&mut self, pipeline: &Pipeline) {
        if pipeline
            .cmd_iter()
            .any(|cmd| effect_of(cmd) != Effect::None)
        {
            self.current.tainted = true;
        }
    }

    fn step(&mut self, effect: Effect) {
        let s = &mut self.current;
        if s.in_multi {
            // Inside MULTI the server queues commands; only these act at once.
            match effect {
                Effect::Exec => {
                    s.in_multi = false;
                    s.watching = false;
                    for queued in std::mem::take(&mut self.queued) {
                        self.step(queued);
                    }
                }
                Effect::Discard => {
                    s.in_multi = false;
                    s.watching = false;
                    self.queued.clear();
                }
                // MULTI inside MULTI and WATCH inside MULTI are refused by the server.
                Effect::Multi | Effect::Watch => {}
                other => self.queued.push(other),
            }
            return;
        }
        match effect {
            Effect::None => {}
            Effect::Multi => s.in_multi = true,
            // Outside MULTI these end nothing but a watch (EXEC errors without MULTI).
            Effect::Exec | Effect::Discard | Effect::Unwatch => s.watching = false,
            Effect::Watch => s.watching = true,
            Effect::Select(db) => s.db = db,
            Effect::Tracking(on) => s.tracking = on,
            Effect::Readonly(on) => s.readonly = on,
            Effect::Taint => s.tainted = true,
        }
    }
}

/// An `EXEC` whose reply is nil (a watched key changed) or an error ran nothing: it ends the
/// transaction like `DISCARD`.
fn exec_outcome(effect: Effect, reply: &Value) -> Effect {
    match (effect, reply) {
        (Effect::Exec, Value::Nil | Value::ServerError(_)) => Effect::Discard,
        (effect, _) => effect,
    }
}

/// What `cmd` does to the session, from its name and, for a few, its arguments.
fn effect_of(cmd: &Cmd) -> Effect {
    let mut args = words(cmd);
    let Some(name) = args.next() else {
        return Effect::None;
    };
    let is = |word: &str| name.eq_ignore_ascii_case(word.as_bytes());
    let arg_is = |arg: Option<&[u8]>, word: &str| {
        arg.is_some_and(|a| a.eq_ignore_ascii_case(word.as_bytes()))
    };
    if is("MULTI") {
        Effect::Multi
    } else if is("EXEC") {
        Effect::Exec
    } else if is("DISCARD") {
        Effect::Discard
    } else if is("WATCH") {
        Effect::Watch
    } else if is("UNWATCH") {
        Effect::Unwatch
    } else if is("RESET") {
        // RESET also logs the connection out, back to RESP2, and drops its name: none of that
        // can be restored here.
        Effect::Taint
    } else if is("SELECT") {
        match args
            .next()
            .and_then(|db| std::str::from_utf8(db).ok()?.parse().ok())
        {
            Some(db) => Effect::Select(db),
            None => Effect::Taint,
        }
    } else if is("READONLY") {
        Effect::Readonly(true)
    } else if is("READWRITE") {
        Effect::Readonly(false)
    } else if is("CLIENT") {
        let sub = args.next();
        if arg_is(sub, "TRACKING") {
            let on = args.next();
            if arg_is(on, "ON") {
                Effect::Tracking(true)
            } else if arg_is(on, "OFF") {
                Effect::Tracking(false)
            } else {
                Effect::Taint
            }
        } else if arg_is(sub, "REPLY") && arg_is(args.next(), "ON") {
            Effect::None
        } else if ["REPLY", "SETNAME", "NO-EVICT", "NO-TOUCH", "SETINFO"]
            .iter()
            .any(|word| arg_is(sub, word))
        {
            Effect::Taint
        } else {
            Effect::None
        }
    } else if [
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "MONITOR",
        "HELLO",
        "AUTH",
        "SWAPDB",
        // The server closes the connection after answering: no one else may be on it.
        "QUIT",
    ]
    .iter()
    .any(|word| is(word))
    {
        Effect::Taint
    } else {
        Effect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Cmd {
        let mut cmd = redis::cmd(words[0]);
        for word in &words[1..] {
            cmd.arg(*word);
        }
        cmd
    }

    /// Each command answered `OK`; an `EXEC` answered with the results of what it ran.
    fn run(session: &mut Session, commands: &[&[&str]]) {
        for words in commands {
            let reply = if words[0].eq_ignore_ascii_case("EXEC") {
                Value::Array(vec![Value::Okay])
            } else {
                Value::Okay
            };
            session.apply(&cmd(words), &reply);
        }
    }

    #[test]
    fn plain_commands_leave_the_session_clean() {
        let mut s = Session::new(0);
        run(
            &mut s,
            &[&["GET", "k"], &["client", "id"], &["CLIENT", "REPLY", "ON"]],
        );
        assert!(!s.is_dirty());
    }

    #[test]
    fn a_completed_transaction_is_clean() {
        let mut s = Session::new(0);
        run(&mut s, &[&["WATCH", "k"], &["multi"], &["SET", "k", "v"]]);
        assert!(s.is_dirty());
        run(&mut s, &[&["EXEC"]]);
        assert!(!s.is_dirty());
    }

    #[test]
    fn watch_then_an_atomic_pipeline_is_clean() {
        let mut s = Session::new(0);
        s.apply(&cmd(&["WATCH", "balance"]), &Value::Okay);
        assert!(s.is_dirty());
        let pipe = redis::pipe().atomic().set("a", 1).get("a").to_owned();
        let replies = [Value::Array(vec![Value::Okay, Value::Int(1)])];
        s.apply_pipeline(&pipe, &replies);
        assert!(!s.is_dirty());
    }

    #[test]
    fn reset_then_select_is_dirty() {
        let mut s = Session::new(0);
        run(&mut s, &[&["RESET"], &["SELECT", "9"]]);
        assert!(s.is_dirty(), "the next user would be on database 9");
    }

    #[test]
    fn reset_alone_is_never_undone() {
        let mut s = Session::new(0);
        run(&mut s, &[&["RESET"], &["SELECT", "0"]]);
        assert!(
            s.is_dirty(),
            "RESET logged the connection out and dropped its name"
        );
    }

    #[test]
    fn unwatch_then_watch_is_watching() {
        let mut s = Session::new(0);
        run(&mut s, &[&["UNWATCH"], &["WATCH", "k"]]);
        assert!(
            s.is_dirty(),
            "the next user's MULTI/EXEC would be discarded"
        );
    }

    #[test]
    fn selecting_back_to_the_baseline_is_clean() {
        let mut s = Session::new(2);
        run(&mut s, &[&["SELECT", "9"]]);
        assert!(s.is_dirty());
        run(&mut s, &[&["SELECT", "2"]]);
        assert!(!s.is_dirty());
    }

    #[test]
    fn commands_queued_in_multi_act_at_exec_and_not_after_discard() {
        let mut s = Session::new(0);
        run(&mut s, &[&["MULTI"], &["SELECT", "3"], &["DISCARD"]]);
        assert!(!s.is_dirty(), "a discarded SELECT never ran");
        run(&mut s, &[&["MULTI"], &["SELECT", "3"], &["EXEC"]]);
        assert!(s.is_dirty(), "an executed SELECT did");
    }

    #[test]
    fn an_exec_that_ran_nothing_applies_nothing_of_its_queue() {
        // SELECT 9 outside, then a transaction that would go back to 0 but does not run.
        let mut aborted = Session::new(0);
        run(
            &mut aborted,
            &[
                &["SELECT", "9"],
                &["WATCH", "k"],
                &["MULTI"],
                &["SELECT", "0"],
            ],
        );
        aborted.apply(&cmd(&["EXEC"]), &Value::Nil);
        assert!(
            aborted.is_dirty(),
            "a watched key changed: still on database 9"
        );

        let mut refused = Session::new(0);
        run(
            &mut refused,
            &[&["SELECT", "9"], &["MULTI"], &["SELECT", "0"]],
        );
        refused.apply_failed(&cmd(&["EXEC"]));
        assert!(refused.is_dirty(), "EXECABORT: still on database 9");

        let mut atomic = Session::new(0);
        run(&mut atomic, &[&["SELECT", "9"]]);
        let pipe = redis::pipe().atomic().cmd("SELECT").arg(0).to_owned();
        atomic.apply_pipeline(&pipe, &[Value::Nil]);
        assert!(atomic.is_dirty(), "an aborted atomic pipeline ran nothing");
    }

    #[test]
    fn the_set_up_hook_defines_the_baseline() {
        let mut s = Session::new(0);
        run(&mut s, &[&["SELECT", "4"], &["CLIENT", "TRACKING", "ON"]]);
        s.adopt_as_baseline();
        assert!(!s.is_dirty());
        run(&mut s, &[&["CLIENT", "TRACKING", "OFF"]]);
        assert!(s.is_dirty());
    }

    #[test]
    fn irreversible_state_taints() {
        for words in [
            &["SUBSCRIBE", "ch"][..],
            &["CLIENT", "REPLY", "OFF"],
            &["HELLO", "3"],
            &["QUIT"],
            &["READONLY"],
            &["SELECT", "not-a-number"],
            &["RESET"],
        ] {
            let mut s = Session::new(0);
            run(&mut s, &[words]);
            assert!(s.is_dirty(), "{words:?}");
        }
    }

    #[test]
    fn a_failed_pipeline_that_touches_the_session_is_never_reused() {
        let failure = RedisError::from((redis::ErrorKind::Parse, "unreadable reply"));
        let mut s = Session::new(0);
        let pipe = redis::pipe().get("a").get("b").to_owned();
        s.apply_failed_pipeline(&pipe, &failure);
        assert!(!s.is_dirty(), "plain commands changed nothing");
        let pipe = redis::pipe().cmd("SELECT").arg(1).get("b").to_owned();
        s.apply_failed_pipeline(&pipe, &failure);
        assert!(s.is_dirty());
    }

    #[test]
    fn a_transaction_refused_at_exec_ran_nothing_and_ended_the_watch() {
        let aborted = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort),
            "Transaction discarded because of previous errors.",
        ));
        let mut s = Session::new(0);
        run(&mut s, &[&["WATCH", "k"]]);
        let pipe = redis::pipe()
            .atomic()
            .cmd("SELECT")
            .arg(3)
            .set("k", 1)
            .to_owned();
        s.apply_failed_pipeline(&pipe, &aborted);
        assert!(!s.is_dirty(), "nothing ran, and EXEC ended the watch");
        let other = RedisError::from((redis::ErrorKind::Parse, "unreadable reply"));
        s.apply_failed_pipeline(&pipe, &other);
        assert!(s.is_dirty(), "what ran is not known");
    }

    #[test]
    fn each_reply_of_a_plain_pipeline_applies_to_its_command() {
        let refused = redis::parse_redis_value(b"-OOM command not allowed\r\n").unwrap();
        assert!(matches!(refused, Value::ServerError(_)));
        let mut s = Session::new(0);
        let pipe = redis::pipe().set("k", 1).cmd("SELECT").arg(2).to_owned();
        s.apply_pipeline(&pipe, &[refused.clone(), Value::Okay]);
        assert!(s.is_dirty(), "the SELECT ran");
        let mut s = Session::new(0);
        s.apply_pipeline(&pipe, &[Value::Okay, refused]);
        assert!(!s.is_dirty(), "the SELECT was refused: it did nothing");
    }

    #[test]
    fn exec_ends_a_transaction_even_when_it_fails() {
        let mut s = Session::new(0);
        run(&mut s, &[&["MULTI"]]);
        s.apply_failed(&cmd(&["EXEC"]));
        assert!(!s.is_dirty());
    }
}
