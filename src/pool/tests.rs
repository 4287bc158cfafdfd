use super::*;
use crate::connection::Call;

/// The size of the future `f` returns, without calling it.
fn future_size<'a, A: 'a + ?Sized, F>(_: impl FnOnce(&'a mut A) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// redis-rs boxes every call's future (`ConnectionLike` returns a `Pin<Box<_>>`), and a
/// checkout's future and connection move through several layers on their way out: what
/// is only needed when something failed (a retry's checkout, a validation's PING) is
/// boxed where it is awaited, so that the hot paths do not allocate and copy it each time.
/// Once, a call's future was 5.7 KB, allocated per call, because it held a checkout.
#[test]
fn the_hot_paths_do_not_carry_their_cold_paths() {
    let cmd = redis::cmd("GET");
    let call = future_size(|c: &mut Checkout| c.send(Call::One(&cmd), false));
    let checkout = future_size(|g: &mut RedisGuard| g.get());
    let handed_out = std::mem::size_of::<PooledConnection>();
    assert!(call <= 2_500, "a call's future takes {call} bytes");
    assert!(
        checkout <= 2_500,
        "a checkout's future takes {checkout} bytes"
    );
    assert!(
        handed_out <= 128,
        "a checked-out connection takes {handed_out} bytes"
    );
}
