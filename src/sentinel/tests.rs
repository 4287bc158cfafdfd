use redis::Value;

use super::*;
use crate::pool_core::PoolCore;

fn addr(port: u16) -> PrimaryAddr {
    PrimaryAddr {
        host: "10.0.0.1".into(),
        port,
    }
}

fn watch_and_shared() -> (SentinelWatch, PoolCore) {
    let config = crate::Config::builder("redis+sentinel://s1,s2,s3/mymaster")
        .build()
        .unwrap();
    let watch = SentinelWatch::new(config.sentinel.clone().unwrap());
    (watch, PoolCore::new(config))
}

fn primary(watch: &SentinelWatch) -> (u16, u64) {
    let known = watch.lock_known();
    let known = known.as_ref().unwrap();
    (known.addr.port, known.epoch)
}

/// Every sentinel announces the same failover: the epoch must not grow with each, or a
/// later failover announced only through polls (its true epoch one above) is ignored.
#[test]
fn a_failover_missed_after_one_announced_is_still_followed() {
    let (watch, core) = watch_and_shared();
    watch.learn(addr(1), 0, &core);
    for _ in 0..3 {
        watch.announced(addr(2), &core);
    }
    assert_eq!(watch.generation(), 1);
    // The poll right after the announcement gives the true epoch.
    watch.learn(addr(2), 1, &core);
    // A sentinel that has not heard of it yet is ignored.
    watch.learn(addr(1), 0, &core);
    assert_eq!(primary(&watch), (2, 1));
    // The next failover, seen only by a poll.
    watch.learn(addr(1), 2, &core);
    assert_eq!(primary(&watch), (1, 2));
    assert_eq!(watch.generation(), 2);
}

/// Right after an announcement, before the true epoch is known, a lagging sentinel's
/// answer for the old primary does not move the pool back.
#[test]
fn a_lagging_sentinel_does_not_undo_an_announcement() {
    let (watch, core) = watch_and_shared();
    watch.learn(addr(1), 5, &core);
    watch.announced(addr(2), &core);
    watch.learn(addr(1), 5, &core);
    assert_eq!(primary(&watch).0, 2);
    assert_eq!(watch.generation(), 1);
}

/// `SENTINEL MASTER` as a sentinel answers it, with the given flags.
fn master_reply(port: u16, epoch: u64, flags: &str) -> Value {
    let fields = [
        ("name", "mymaster".to_owned()),
        ("ip", "10.0.0.1".to_owned()),
        ("port", port.to_string()),
        ("flags", flags.to_owned()),
        ("config-epoch", epoch.to_string()),
    ];
    Value::Array(
        fields
            .into_iter()
            .flat_map(|(k, v)| [Value::BulkString(k.into()), Value::BulkString(v.into())])
            .collect(),
    )
}

#[test]
fn a_sentinel_answer_gives_the_address_and_its_epoch() {
    let answer = master_in(master_reply(6380, 7, "master")).unwrap();
    assert_eq!(answer, Some((addr(6380), 7)));
}

/// The leader of a failover reports the old address under the new epoch between the
/// promotion and the announcement. Taking that epoch for the old address would make the
/// announced primary (same epoch) lose to it, and the pool would stay on the old one.
#[test]
fn the_epoch_of_a_sentinel_in_the_middle_of_a_failover_is_not_taken() {
    let (watch, core) = watch_and_shared();
    watch.learn(addr(1), 1, &core);
    let midway = master_in(master_reply(1, 2, "master,failover_in_progress"))
        .unwrap()
        .unwrap();
    assert_eq!(midway, (addr(1), NO_EPOCH));
    watch.learn(midway.0, midway.1, &core);
    assert_eq!(primary(&watch), (1, 1));
    watch.learn(addr(2), 2, &core);
    assert_eq!(primary(&watch), (2, 2));
}

/// However the epochs went wrong (here the sentinels lost theirs in a restart), once the
/// known primary is found serving as a replica the sentinels' answer wins, and only the
/// answer for the address that was refuted: a lagging one for another address does not
/// undo the move.
#[test]
fn a_primary_found_to_be_a_replica_gives_way_to_the_sentinels_answer() {
    let (watch, core) = watch_and_shared();
    watch.learn(addr(1), 9, &core);
    watch.learn(addr(2), 1, &core);
    assert_eq!(
        primary(&watch).0,
        1,
        "an older epoch alone does not move the pool"
    );
    watch.refuted(&addr(3), core.name());
    watch.learn(addr(2), 1, &core);
    assert_eq!(
        primary(&watch).0,
        1,
        "only the known primary can be refuted"
    );
    watch.refuted(&addr(1), core.name());
    watch.learn(addr(2), 1, &core);
    assert_eq!(primary(&watch), (2, 1));
    assert_eq!(watch.generation(), 1);
    watch.learn(addr(1), 1, &core);
    assert_eq!(primary(&watch).0, 2, "the move is protected again");
}
