//! What the pool needs to know about a command: how long its reply may legitimately take,
//! and whether it only reads (so it may be sent again after its connection failed).
//!
//! Whether a command only reads is Redis's own answer (the `readonly` flag of `COMMAND`), asked
//! once per pool when it first connects: no list in this crate to go stale as Redis adds
//! commands or modules are loaded. Until that answer is in (a fault in a pool's first moments,
//! or a link too slow for the large reply), the core reads Redis has flagged `readonly` since
//! 3.2 are known from [`CORE_READS`]; nothing else is.
//!
//! A blocking command (`BLPOP jobs 5`, `XREAD BLOCK 2000 ...`, `WAIT 1 100`) waits on the
//! server for up to its own timeout before it answers, so its reply may take that long plus
//! the usual `response_timeout`. Its timeout is read from its arguments; a timeout of 0 means
//! "as long as it takes", which the caller bounds (a request timeout, a `select!`).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Arg, Cmd, Value};

/// How long "forever" is for a blocking command with a 0 timeout: long enough never to fire,
/// small enough that deadline arithmetic cannot overflow.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The commands that may block on the server.
const BLOCKING: &[&str] = &[
    "BLPOP",
    "BRPOP",
    "BLMOVE",
    "BRPOPLPUSH",
    "BZPOPMIN",
    "BZPOPMAX",
    "BLMPOP",
    "BZMPOP",
    "XREAD",
    "XREADGROUP",
    "WAIT",
    "WAITAOF",
];

/// Redis's core commands that only read, and have since Redis 3.2 (`COMMAND` flags them
/// `readonly`, not `write`), sorted. Only consulted before Redis has described its own.
const CORE_READS: &[&str] = &[
    "bitcount",
    "bitpos",
    "dbsize",
    "dump",
    "exists",
    "geodist",
    "geohash",
    "geopos",
    "get",
    "getbit",
    "getrange",
    "hexists",
    "hget",
    "hgetall",
    "hkeys",
    "hlen",
    "hmget",
    "hscan",
    "hstrlen",
    "hvals",
    "keys",
    "lindex",
    "llen",
    "lrange",
    "mget",
    "pttl",
    "randomkey",
    "scan",
    "scard",
    "sdiff",
    "sinter",
    "sismember",
    "smembers",
    "srandmember",
    "sscan",
    "strlen",
    "sunion",
    "ttl",
    "type",
    "xlen",
    "xrange",
    "xrevrange",
    "zcard",
    "zcount",
    "zlexcount",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrank",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscan",
    "zscore",
];

/// A command as sent: its name, then its arguments.
pub(crate) fn words(cmd: &Cmd) -> impl Iterator<Item = &[u8]> {
    cmd.args_iter().filter_map(|arg| match arg {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    })
}

/// A command's name for a span (`db.operation.name`), upper case, without allocating: only
/// the name, never an argument (a key or value may be personal data).
pub(crate) struct OperationName<'a>(pub(crate) Option<&'a [u8]>);

impl OperationName<'_> {
    pub(crate) fn of(cmd: &Cmd) -> OperationName<'_> {
        OperationName(words(cmd).next())
    }
}

impl std::fmt::Display for OperationName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for &byte in self.0.unwrap_or(b"?") {
            f.write_char(char::from(byte.to_ascii_uppercase()).min('~'))?;
        }
        Ok(())
    }
}

/// How long `cmd` may block on the server before it answers, if it is a blocking command.
/// Runs for every command sent, so anything but a blocking command costs one name check.
pub(crate) fn server_wait(cmd: &Cmd) -> Option<Duration> {
    let mut words = words(cmd);
    let name = words.next()?;
    let is = |word: &str| name.eq_ignore_ascii_case(word.as_bytes());
    if !BLOCKING.iter().any(|w| is(w)) {
        return None;
    }
    let rest: Vec<&[u8]> = words.collect();
    if [
        "BLPOP",
        "BRPOP",
        "BLMOVE",
        "BRPOPLPUSH",
        "BZPOPMIN",
        "BZPOPMAX",
    ]
    .iter()
    .any(|w| is(w))
    {
        seconds(rest.last().copied()?)
    } else if is("BLMPOP") || is("BZMPOP") {
        seconds(rest.first().copied()?)
    } else if is("XREAD") || is("XREADGROUP") {
        // XREADGROUP's group and consumer names come first and may be spelled "BLOCK".
        let rest = match rest.first() {
            Some(group) if is("XREADGROUP") && group.eq_ignore_ascii_case(b"GROUP") => {
                rest.get(3..).unwrap_or_default()
            }
            _ => &rest[..],
        };
        // Options precede STREAMS, whose keys and ids could themselves be spelled "BLOCK".
        let options = rest
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))
            .map_or(rest, |end| &rest[..end]);
        let at = options
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"BLOCK"))?;
        millis(options.get(at + 1)?)
    } else if is("WAIT") || is("WAITAOF") {
        millis(rest.last()?)
    } else {
        None
    }
}

/// Which commands only read, as this pool's Redis answered `COMMAND`.
#[derive(Debug, Default)]
pub(crate) struct ReadOnlyCommands {
    /// Lower-case `name` or `name|subcommand` -> whether Redis flags it `readonly`; `None`
    /// when Redis knows no such command. Set once, then read by every call without a lock.
    known: OnceLock<HashMap<String, Option<bool>>>,
    /// Set while learning or once learned.
    learning: AtomicBool,
}

impl ReadOnlyCommands {
    /// Lets a later attempt learn.
    pub(crate) fn learning_failed(&self) {
        self.learning.store(false, Ordering::Release);
    }

    /// Claims the one learning of this pool: false if it is under way or done.
    pub(crate) fn start_learning(&self) -> bool {
        !self.learning.swap(true, Ordering::AcqRel)
    }

    /// Learns every command Redis has (and their subcommands) from one `COMMAND` on `handle`,
    /// a connection of its own (the reply is large and must hold up no caller). A failure
    /// lets a later attempt try again.
    pub(crate) async fn learn(
        &self,
        mut handle: MultiplexedConnection,
        response_timeout: Duration,
    ) {
        {
            // Every command Redis has, once: allow for a slow link.
            handle.set_response_timeout(response_timeout.saturating_mul(10));
            let learned = match handle.send_packed_command(&redis::cmd("COMMAND")).await {
                Ok(Value::Array(entries)) => {
                    let mut known = HashMap::new();
                    learn_entries(&mut known, &entries);
                    !known.is_empty() && self.known.set(known).is_ok()
                }
                _ => false,
            };
            tracing::debug!(learned, "learned which commands only read");
            if !learned {
                self.learning.store(false, Ordering::Release);
            }
        }
    }

    /// Whether every command in `cmds` only reads, if Redis has described them all already
    /// (before it has: `Some(true)` for [`CORE_READS`] alone). Runs for every call: no lock,
    /// no allocation.
    pub(crate) fn known<'c>(&self, cmds: impl Iterator<Item = &'c Cmd>) -> Option<bool> {
        let Some(known) = self.known.get() else {
            return core_reads_only(cmds);
        };
        let mut all = true;
        for cmd in cmds {
            let mut words = words(cmd);
            let (mut name_buf, mut sub_buf) = ([0; NAME_BYTES], [0; 2 * NAME_BYTES + 1]);
            let name = lower_case(&[words.next()?], &mut name_buf)?;
            // `name|argument` is only an entry for container commands; a known name decides.
            let sub = words
                .next()
                .filter(|sub| sub.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-'))
                .and_then(|sub| lower_case(&[name.as_bytes(), b"|", sub], &mut sub_buf));
            if !known.contains_key(name) && !sub.is_some_and(|sub| known.contains_key(sub)) {
                return None;
            }
            // The subcommand's entry when Redis has one (`OBJECT|ENCODING`), else the
            // command's; a command Redis does not know is not read-only.
            let flag = |key: &str| known.get(key).copied().flatten();
            all &= sub.and_then(flag).or_else(|| flag(name)).unwrap_or(false);
        }
        Some(all)
    }
}

/// `Some(true)` if every command in `cmds` is one of [`CORE_READS`], else unknown.
fn core_reads_only<'c>(cmds: impl Iterator<Item = &'c Cmd>) -> Option<bool> {
    for cmd in cmds {
        let mut name_buf = [0; NAME_BYTES];
        let name = lower_case(&[words(cmd).next()?], &mut name_buf)?;
        CORE_READS.binary_search(&name).ok()?;
    }
    Some(true)
}

/// The longest command name looked up; longer ones are not known.
const NAME_BYTES: usize = 64;

/// `parts` joined and lower-cased into `buf`, if they fit and are UTF-8.
fn lower_case<'b>(parts: &[&[u8]], buf: &'b mut [u8]) -> Option<&'b str> {
    let mut len = 0;
    for part in parts {
        let end = len + part.len();
        buf.get_mut(len..end)?.copy_from_slice(part);
        len = end;
    }
    buf[..len].make_ascii_lowercase();
    std::str::from_utf8(&buf[..len]).ok()
}

/// Records each `COMMAND` entry's read-only flag, and its subcommands' (the tenth field in
/// Redis 7: `config|get`, ...).
fn learn_entries(known: &mut HashMap<String, Option<bool>>, entries: &[Value]) {
    for entry in entries {
        let Value::Array(fields) = entry else {
            continue;
        };
        let name = match fields.first() {
            Some(Value::BulkString(name)) => String::from_utf8_lossy(name).to_lowercase(),
            Some(Value::SimpleString(name)) => name.to_lowercase(),
            _ => continue,
        };
        known.insert(name, read_only_flag(entry));
        if let Some(Value::Array(subcommands)) = fields.get(9) {
            learn_entries(known, subcommands);
        }
    }
}

/// From one `COMMAND` entry: `[name, arity, flags, ...]`.
fn read_only_flag(entry: &Value) -> Option<bool> {
    let Value::Array(fields) = entry else {
        return None;
    };
    let Some(Value::Array(flags) | Value::Set(flags)) = fields.get(2) else {
        return Some(false);
    };
    let has = |wanted: &str| {
        flags.iter().any(|flag| match flag {
            Value::SimpleString(s) => s.eq_ignore_ascii_case(wanted),
            Value::BulkString(b) => b.eq_ignore_ascii_case(wanted.as_bytes()),
            _ => false,
        })
    };
    Some(has("readonly") && !has("write"))
}

/// A timeout in seconds (a float, as Redis takes it for list and sorted-set commands).
fn seconds(arg: &[u8]) -> Option<Duration> {
    let secs: f64 = std::str::from_utf8(arg).ok()?.parse().ok()?;
    Some(if secs <= 0.0 {
        FOREVER
    } else {
        Duration::try_from_secs_f64(secs)
            .unwrap_or(FOREVER)
            .min(FOREVER)
    })
}

/// A timeout in milliseconds (streams, `WAIT`).
fn millis(arg: &[u8]) -> Option<Duration> {
    let ms: u64 = std::str::from_utf8(arg).ok()?.parse().ok()?;
    Some(if ms == 0 {
        FOREVER
    } else {
        Duration::from_millis(ms).min(FOREVER)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(words: &[&str]) -> Option<Duration> {
        let mut cmd = redis::cmd(words[0]);
        for word in &words[1..] {
            cmd.arg(*word);
        }
        server_wait(&cmd)
    }

    #[test]
    fn blocking_commands_wait_their_own_timeout() {
        let s = Duration::from_secs;
        assert_eq!(wait(&["BLPOP", "a", "b", "5"]), Some(s(5)));
        assert_eq!(
            wait(&["brpop", "a", "0.5"]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            wait(&["BLMOVE", "a", "b", "LEFT", "RIGHT", "2"]),
            Some(s(2))
        );
        assert_eq!(wait(&["BRPOPLPUSH", "a", "b", "3"]), Some(s(3)));
        assert_eq!(wait(&["BZPOPMIN", "z", "4"]), Some(s(4)));
        assert_eq!(wait(&["BLMPOP", "6", "2", "a", "b", "LEFT"]), Some(s(6)));
        assert_eq!(wait(&["BZMPOP", "7", "1", "z", "MIN"]), Some(s(7)));
        assert_eq!(
            wait(&["XREAD", "COUNT", "2", "BLOCK", "1500", "STREAMS", "s", "$"]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            wait(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "100",
                "STREAMS",
                "s",
                ">"
            ]),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            wait(&["WAIT", "1", "250"]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            wait(&["WAITAOF", "1", "0", "80"]),
            Some(Duration::from_millis(80))
        );
    }

    #[test]
    fn a_zero_timeout_waits_as_long_as_the_caller() {
        assert_eq!(wait(&["BLPOP", "jobs", "0"]), Some(FOREVER));
        assert_eq!(
            wait(&["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]),
            Some(FOREVER)
        );
    }

    /// A `COMMAND` entry as Redis 7 sends it: name, arity, flags, ..., subcommands.
    fn entry(name: &str, flags: &[&str], subcommands: Vec<Value>) -> Value {
        let flags = flags
            .iter()
            .map(|f| Value::SimpleString((*f).to_owned()))
            .collect();
        let mut fields = vec![
            Value::BulkString(name.as_bytes().to_vec()),
            Value::Int(-2),
            Value::Array(flags),
        ];
        fields.extend((0..6).map(|_| Value::Nil));
        fields.push(Value::Array(subcommands));
        Value::Array(fields)
    }

    fn command(words: &[&str]) -> Cmd {
        let mut cmd = redis::cmd(words[0]);
        for word in &words[1..] {
            cmd.arg(*word);
        }
        cmd
    }

    #[test]
    fn read_only_is_redis_s_own_flag_and_subcommands_decide_for_containers() {
        let commands = ReadOnlyCommands::default();
        let mut known = HashMap::new();
        learn_entries(
            &mut known,
            &[
                entry("get", &["readonly", "fast"], vec![]),
                entry("incr", &["write", "denyoom", "fast"], vec![]),
                entry(
                    "object",
                    &[],
                    vec![
                        entry("object|encoding", &["readonly"], vec![]),
                        entry("object|freq", &["readonly"], vec![]),
                    ],
                ),
            ],
        );
        commands.known.set(known).unwrap();
        let known = |words: &[&[&str]]| {
            let cmds: Vec<Cmd> = words.iter().map(|w| command(w)).collect();
            commands.known(cmds.iter())
        };
        assert_eq!(known(&[&["GET", "k"]]), Some(true));
        assert_eq!(
            known(&[&["INCR", "counter"]]),
            Some(false),
            "a key is not a subcommand"
        );
        assert_eq!(known(&[&["OBJECT", "ENCODING", "k"]]), Some(true));
        assert_eq!(known(&[&["OBJECT", "NEWTHING", "k"]]), Some(false));
        assert_eq!(
            known(&[&["GET", "a"], &["INCR", "b"]]),
            Some(false),
            "a pipeline"
        );
        assert_eq!(
            known(&[&["MODULE.CMD", "x"]]),
            None,
            "never described: ask Redis"
        );
    }

    #[test]
    fn before_redis_has_answered_only_core_reads_are_known() {
        let commands = ReadOnlyCommands::default();
        let known = |words: &[&[&str]]| {
            let cmds: Vec<Cmd> = words.iter().map(|w| command(w)).collect();
            commands.known(cmds.iter())
        };
        assert_eq!(known(&[&["get", "k"]]), Some(true));
        assert_eq!(known(&[&["GET", "a"], &["HGETALL", "h"]]), Some(true));
        assert_eq!(known(&[&["INCR", "k"]]), None, "never guessed a write");
        assert_eq!(known(&[&["GET", "a"], &["SET", "b", "1"]]), None);
        assert_eq!(known(&[&["EVAL_RO", "return 1", "0"]]), None);
        assert!(CORE_READS.is_sorted(), "looked up by binary search");
    }

    /// The built-in list says only what the server itself says.
    #[cfg(feature = "testkit")]
    #[test]
    fn every_core_read_is_flagged_readonly_by_redis() {
        let server = crate::testkit::RedisServer::start().unwrap();
        let Value::Array(entries) = server.command(&["COMMAND"]).unwrap() else {
            panic!("COMMAND answers an array");
        };
        let mut known = HashMap::new();
        learn_entries(&mut known, &entries);
        for name in CORE_READS {
            assert_eq!(known.get(*name), Some(&Some(true)), "{name}");
        }
    }

    #[test]
    fn other_commands_and_non_blocking_forms_do_not_wait() {
        assert_eq!(wait(&["GET", "k"]), None);
        assert_eq!(
            wait(&["XREAD", "STREAMS", "BLOCK", "0"]),
            None,
            "a stream named BLOCK"
        );
        assert_eq!(
            wait(&[
                "XREADGROUP",
                "GROUP",
                "BLOCK",
                "BLOCK",
                "BLOCK",
                "1000",
                "STREAMS",
                "s",
                ">"
            ]),
            Some(Duration::from_secs(1)),
            "a group and a consumer named BLOCK"
        );
        assert_eq!(
            wait(&["BLPOP", "jobs", "soon"]),
            None,
            "not a number: Redis refuses it"
        );
    }
}
