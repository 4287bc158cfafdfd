//! A socket's health record: why it stopped being usable, what it wrote and read, the
//! greeting a server that refuses connections sends first.

use std::io;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::reply_limit::ReplyTooLarge;

/// Why a socket stopped being usable, as seen from below the Redis protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LinkState {
    /// The connection is still being set up: its failure is the connect's, not a working
    /// socket's.
    Connecting = 5,
    Open = 0,
    /// The peer closed the connection (FIN): restart, `CLIENT KILL`, server `timeout`.
    Eof = 1,
    /// A read or write failed: reset by peer, broken pipe, `TCP_USER_TIMEOUT`, keepalive.
    Failed = 2,
    /// The connection's driver task ended (it does so after either of the above, or on a
    /// protocol error).
    DriverEnded = 3,
    /// The pool gave the connection up (evicted, idle, expired, or the pool closed).
    Retired = 4,
    /// A reply exceeded `max_reply_size`, and the read failed: one reply's fault, not the
    /// socket's nor Redis's.
    ReplyTooLarge = 6,
}

impl LinkState {
    /// Whether the socket failed on its own, rather than being given up by the pool.
    pub(crate) fn is_failure(self) -> bool {
        matches!(
            self,
            LinkState::Eof | LinkState::Failed | LinkState::DriverEnded
        )
    }
}

/// Called once, with the first reason an established link closed.
pub(crate) type OnClose = Box<dyn Fn(LinkState) + Send + Sync>;

/// The health of one socket, written by the driver task and read at checkout. It closes
/// exactly once, at the first failure or when the pool gives the connection up (at the latest
/// when it is dropped). The close of a link that was established (its connect succeeded) is
/// reported, so the pool can count the sockets that work.
pub(crate) struct LinkHealth {
    state: AtomicU8,
    on_close: OnClose,
    /// Bytes the kernel (or the TLS layer) has accepted from the driver.
    pub(super) written: AtomicU64,
    /// The first bytes read while connecting: Redis turns a connection away at accept
    /// (`maxclients`, protected mode) with an error line and closes it, and redis-rs takes
    /// that line for the reply to its first set-up command, reporting only the close after.
    greeting: std::sync::Mutex<Vec<u8>>,
    /// The reply that closed the link, if one was too large.
    pub(super) too_large: std::sync::OnceLock<ReplyTooLarge>,
    /// The TLS failure that closed the link, in words: an alert can arrive after the
    /// handshake, in a read of the connection's driver, which passes it on as text only.
    #[cfg(feature = "tls")]
    tls_failure: std::sync::OnceLock<String>,
}

/// How Redis's refusals at accept begin: at `maxclients`, and in protected mode.
const ACCEPT_REFUSALS: [&str; 2] = ["ERR max number of clients reached", "DENIED "];

/// How much of the first reply is kept: enough for Redis's accept-time error lines.
const GREETING_BYTES: usize = 128;

impl std::fmt::Debug for LinkHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LinkHealth").field(&self.state()).finish()
    }
}

impl Default for LinkHealth {
    fn default() -> Self {
        Self::new(Box::new(|_| {}))
    }
}

impl Drop for LinkHealth {
    fn drop(&mut self) {
        self.close(LinkState::Retired);
    }
}

impl LinkHealth {
    pub(crate) fn new(on_close: OnClose) -> Self {
        Self {
            state: AtomicU8::new(LinkState::Connecting as u8),
            on_close,
            written: AtomicU64::new(0),
            greeting: std::sync::Mutex::new(Vec::new()),
            too_large: std::sync::OnceLock::new(),
            #[cfg(feature = "tls")]
            tls_failure: std::sync::OnceLock::new(),
        }
    }

    /// A read or write failed with `error`.
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    pub(super) fn failed(&self, error: &io::Error) {
        #[cfg(feature = "tls")]
        if let Some(cause) = crate::tls::tls_failure(error) {
            let _ = self.tls_failure.set(cause);
        }
        self.close(LinkState::Failed);
    }

    /// The TLS failure that closed the link, if that is why it closed.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_failure(&self) -> Option<&str> {
        self.tls_failure.get().map(String::as_str)
    }

    /// The reply over `max_reply_size` that closed the link, if that is why it closed.
    pub(crate) fn too_large(&self) -> Option<ReplyTooLarge> {
        self.too_large.get().copied()
    }

    /// Keeps the start of what the server sent while the connection is being set up.
    pub(super) fn capture(&self, read: &[u8]) {
        if self.state.load(Ordering::Acquire) != LinkState::Connecting as u8 {
            return;
        }
        let mut greeting = self.greeting.lock().unwrap_or_else(|p| p.into_inner());
        let room = GREETING_BYTES.saturating_sub(greeting.len());
        greeting.extend_from_slice(&read[..read.len().min(room)]);
    }

    /// The error line the server turned the connection away with, if the connection began
    /// with one, e.g. `ERR max number of clients reached`: read by the driver, then the
    /// connection closed (an error reply to a command, `WRONGPASS`, leaves it open); or still
    /// `unread` in the socket (the driver failed writing to the closed socket first).
    /// Printable ASCII only: it reaches logs and errors.
    pub(crate) fn turned_away(&self, unread: &[u8]) -> Option<String> {
        let greeting = self.greeting.lock().unwrap_or_else(|p| p.into_inner());
        let (start, read) = match greeting.is_empty() {
            true => (unread, false),
            false => (&greeting[..], true),
        };
        let line = start.strip_prefix(b"-")?;
        let end = line.windows(2).position(|w| w == b"\r\n")?;
        let line: String = line[..end]
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '?'
                }
            })
            .collect();
        let closed = matches!(self.state(), LinkState::Eof | LinkState::Failed);
        // Only Redis's own refusals at accept: an error reply to a set-up command
        // (`CLIENT SETINFO` on Redis 7.0) followed by a kill is no refusal.
        let refusal = ACCEPT_REFUSALS.iter().any(|start| line.starts_with(start));
        (refusal && (!read || closed)).then_some(line)
    }

    /// Whether nothing at all was read while connecting.
    pub(crate) fn heard_nothing(&self) -> bool {
        self.greeting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// How many bytes the driver has written so far: a call that fails on a link that failed
    /// before this moved was never sent.
    #[inline]
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn state(&self) -> LinkState {
        match self.state.load(Ordering::Acquire) {
            0 => LinkState::Open,
            1 => LinkState::Eof,
            2 => LinkState::Failed,
            3 => LinkState::DriverEnded,
            4 => LinkState::Retired,
            6 => LinkState::ReplyTooLarge,
            _ => LinkState::Connecting,
        }
    }

    /// The connect succeeded: from now on a close is reported. False if the socket closed
    /// already.
    pub(crate) fn establish(&self) -> bool {
        self.state
            .compare_exchange(
                LinkState::Connecting as u8,
                LinkState::Open as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Records the first reason the link closed, and reports it if the link was established;
    /// later ones add nothing.
    pub(crate) fn close(&self, state: LinkState) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current != LinkState::Open as u8 && current != LinkState::Connecting as u8 {
                return;
            }
            match self.state.compare_exchange(
                current,
                state as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(previous) => {
                    if previous == LinkState::Open as u8 {
                        (self.on_close)(state);
                    }
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Whether the socket is still usable as far as is known (also while connecting).
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state(), LinkState::Open | LinkState::Connecting)
    }
}
