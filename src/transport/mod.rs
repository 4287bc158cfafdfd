//! Opening the socket under a pooled connection, and watching it.
//!
//! redis-rs hides its socket inside `MultiplexedConnection`, so a pool cannot ask it whether the
//! peer has gone. We open the socket ourselves (with keepalive, `TCP_NODELAY` and
//! `TCP_USER_TIMEOUT` set per socket) and wrap it in a [`TrackedStream`] that records EOF and
//! I/O errors as the connection's driver reads. The driver reads even while the connection is
//! idle, so a server restart, `CLIENT KILL`, a server `timeout` or a reset is on record before
//! the next checkout, at no round trip.

mod connect;
mod link;
mod peer;

#[cfg(test)]
pub(crate) use connect::apply_socket_options_for_test;
pub(crate) use connect::{BoxedStream, connect_secured};
pub(crate) use link::{LinkHealth, LinkState};
pub(crate) use peer::{PeerProbe, PeerState, TrackedStream};

#[cfg(test)]
mod tests;
