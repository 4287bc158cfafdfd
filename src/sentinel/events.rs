//! What the sentinels say of one master: the primary they name, and what they announce.
//!
//! The sentinel leading a failover publishes each step on a channel named after it. Between
//! the promotion of the replica (`REPLICAOF NO ONE`, a few hundred milliseconds into a forced
//! failover) and `+switch-master` (about a second in), the old primary still takes writes and
//! acknowledges them, and every one is lost when it is turned into a replica. So the pool
//! holds writes from the first step (`+failover-state-select-slave`, before the promotion)
//! until the switch, and lets them go if the failover is aborted.

use redis::{PushInfo, PushKind, Value};

use redis::RedisError;

use super::{Answer, NO_EPOCH, PrimaryAddr};

/// The new primary: `<name> <old ip> <old port> <new ip> <new port>`.
pub(super) const SWITCH_MASTER: &str = "+switch-master";
/// The leader chose the replica to promote: `master <name> <ip> <port>`.
const FAILOVER_BEGINS: &str = "+failover-state-select-slave";
/// The failover stopped before the switch: `master <name> <ip> <port>`.
const FAILOVER_ABORTS: [&str; 4] = [
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
    "+failover-end-for-timeout",
];

/// Every channel the pool follows.
pub(super) fn channels() -> Vec<&'static str> {
    let mut channels = vec![SWITCH_MASTER, FAILOVER_BEGINS];
    channels.extend(FAILOVER_ABORTS);
    channels
}

/// An announcement about the pool's master.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// A failover began: the old primary is about to lose the writes it takes.
    FailoverBegins,
    /// The failover stopped: the primary stays where it was.
    FailoverAborted,
    /// The failover is done: the primary is here now.
    Switched(PrimaryAddr),
}

/// The event in `push` about `master_name`, if it is one.
pub(super) fn event_for(push: &PushInfo, master_name: &str) -> Option<Event> {
    if push.kind != PushKind::Message {
        return None;
    }
    let channel = text(push.data.first()?)?;
    let payload = text(push.data.get(1)?)?;
    let words: Vec<&str> = payload.split(' ').collect();
    if channel == SWITCH_MASTER {
        return match words.as_slice() {
            [name, _, _, host, port] if *name == master_name => {
                Some(Event::Switched(PrimaryAddr::announced(host, port)?))
            }
            _ => None,
        };
    }
    let about_master = matches!(words.as_slice(), ["master", name, ..] if *name == master_name);
    if !about_master {
        None
    } else if channel == FAILOVER_BEGINS {
        Some(Event::FailoverBegins)
    } else if FAILOVER_ABORTS.contains(&channel.as_str()) {
        Some(Event::FailoverAborted)
    } else {
        None
    }
}

pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The primary's address and epoch in a `SENTINEL MASTER` reply; `None` for "No such
/// master".
pub(super) fn master_in(reply: Value) -> Result<Option<Answer>, RedisError> {
    let fields: Vec<(String, String)> = match reply {
        Value::ServerError(e) if e.details().is_some_and(|d| d.contains("No such master")) => {
            return Ok(None);
        }
        Value::ServerError(e) => return Err(e.into()),
        Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(k, v)| Some((text(&k)?, text(&v)?)))
            .collect(),
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| Some((text(pair.first()?)?, text(pair.get(1)?)?)))
            .collect(),
        other => {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "unexpected SENTINEL MASTER reply",
                format!("{other:?}"),
            )));
        }
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let host = field("ip");
    let port = field("port");
    // While this sentinel leads a failover, its epoch is already the one of the
    // configuration it is about to publish, but the address is still the old one: taken
    // together they would make the old primary look newer than the announcement to come.
    let failing_over = field("flags")
        .is_some_and(|flags| flags.split(',').any(|flag| flag == "failover_in_progress"));
    let epoch = match failing_over {
        true => NO_EPOCH,
        false => field("config-epoch")
            .and_then(|e| e.parse().ok())
            .unwrap_or(NO_EPOCH),
    };
    match (host, port) {
        (Some(host), Some(port)) => match PrimaryAddr::announced(host, port) {
            Some(addr) => Ok(Some((addr, epoch))),
            None => Err(RedisError::from((
                redis::ErrorKind::Client,
                "SENTINEL MASTER reply with an invalid ip or port",
            ))),
        },
        _ => Err(RedisError::from((
            redis::ErrorKind::Client,
            "SENTINEL MASTER reply without ip and port",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, payload: &str) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(channel.into()),
                Value::BulkString(payload.into()),
            ],
        }
    }

    #[test]
    fn a_switch_is_read_for_its_own_master_only() {
        let switch = |payload| event_for(&message(SWITCH_MASTER, payload), "mymaster");
        assert_eq!(
            switch("mymaster 10.0.0.1 6379 10.0.0.2 6380"),
            Some(Event::Switched(PrimaryAddr {
                host: "10.0.0.2".into(),
                port: 6380
            }))
        );
        assert_eq!(switch("other 10.0.0.1 6379 10.0.0.2 6380"), None);
        assert_eq!(switch("mymaster garbage"), None);
    }

    /// A host the configuration would refuse is refused from a sentinel too: a newline in one
    /// once forged a log line.
    #[test]
    fn a_switch_to_a_host_no_config_would_take_is_ignored() {
        let switch = |payload| event_for(&message(SWITCH_MASTER, payload), "mymaster");
        let long = format!("mymaster 10.0.0.1 6379 {}.example 6380", "a".repeat(300));
        for forged in [
            "mymaster 10.0.0.1 6379 evil\nINFO 6380",
            "mymaster 10.0.0.1 6379 evil\u{1b}[2J 6380",
            "mymaster 10.0.0.1 6379 10.0.0.2 0",
            "mymaster 10.0.0.1 6379 10.0.0.2 65536",
            "mymaster 10.0.0.1 6379 -evil.example 6380",
            long.as_str(),
        ] {
            assert_eq!(switch(forged), None, "{forged:?}");
        }
    }

    #[test]
    fn the_steps_of_a_failover_are_read_for_its_own_master_only() {
        let step = |channel, payload| event_for(&message(channel, payload), "mymaster");
        assert_eq!(
            step(FAILOVER_BEGINS, "master mymaster 10.0.0.1 6379"),
            Some(Event::FailoverBegins)
        );
        assert_eq!(step(FAILOVER_BEGINS, "master other 10.0.0.1 6379"), None);
        assert_eq!(
            step(
                "-failover-abort-no-good-slave",
                "master mymaster 10.0.0.1 6379"
            ),
            Some(Event::FailoverAborted)
        );
        // A replica's step names the master after `@`: not the failover's start.
        assert_eq!(
            step(
                "+selected-slave",
                "slave 10.0.0.2:6380 10.0.0.2 6380 @ mymaster 10.0.0.1 6379"
            ),
            None
        );
    }
}
