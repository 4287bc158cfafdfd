//! The bound on one reply: follows the RESP2/RESP3 framing of the bytes a connection reads and
//! fails the read as soon as one top-level reply is known to exceed `max_reply_size`.
//!
//! redis-rs buffers a reply whole before it parses it, however large the server says it is,
//! and whatever the command's timeout: a bulk header of 8 GiB makes it read and keep what comes
//! until the timeout fires. The bytes arrive through the pool's own stream wrapper
//! (`transport::TrackedStream`), so the bound is kept there, before redis-rs sees them.
//!
//! The tracker keeps no copy of the bytes and no stack: a reply is complete when the count of
//! the elements it still owes reaches zero (an aggregate of `n` adds `n`, a map or an attribute
//! `2n`, every element takes one). A bulk payload is skipped by its length in one step, so the
//! cost per read is a few comparisons plus a scan of the header and simple lines.

use std::fmt;
use std::io;

/// A reply that went over `max_reply_size`: the connection's read fails with it.
///
/// ```ignore
/// let too_large = ReplyTooLarge { size: 2_097_159, max: 1_048_576 };
/// assert_eq!(
///     too_large.to_string(),
///     "reply of at least 2097159 bytes exceeds max_reply_size (1048576 bytes)"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyTooLarge {
    /// The bytes the reply has, or is announced to have, when it was stopped.
    pub(crate) size: u64,
    pub(crate) max: u64,
}

impl fmt::Display for ReplyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reply of at least {} bytes exceeds max_reply_size ({} bytes)",
            self.size, self.max
        )
    }
}

impl std::error::Error for ReplyTooLarge {}

impl ReplyTooLarge {
    /// The I/O error the connection's read fails with: its driver ends, and the call waiting
    /// for the reply gets this error.
    pub(crate) fn into_io_error(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// Whether `error` is a read failed by the limit (not a bystander on the same connection,
    /// which sees the connection close).
    pub(crate) fn is_cause_of(error: &redis::RedisError) -> bool {
        crate::cause::io_cause::<ReplyTooLarge>(error).is_some()
    }
}

/// Where the tracker is within the reply being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The next byte is an element's type.
    Type,
    /// In the line of a header that carries a length (`*`, `%`, `~`, `>`, `|`, `$`, `!`, `=`):
    /// its digits so far.
    Header {
        kind: u8,
        length: u64,
        negative: bool,
    },
    /// In a simple line (`+`, `-`, `:`, `,`, `_`, `#`, `(`), up to its `\n`.
    Line,
    /// In a bulk payload and its closing CRLF: the bytes left.
    Payload { left: u64 },
}

/// Follows the replies on one connection; see the module doc.
#[derive(Debug, Clone)]
pub(crate) struct ReplyTracker {
    max: u64,
    step: Step,
    /// Elements the current top-level reply still owes; 0 between replies.
    owed: u64,
    /// Bytes of the current top-level reply read so far.
    read: u64,
}

impl ReplyTracker {
    pub(crate) fn new(max: u64) -> Self {
        Self {
            max,
            step: Step::Type,
            owed: 0,
            read: 0,
        }
    }

    /// Follows `bytes`, the next ones read from the connection. Fails as soon as the reply
    /// being read has, or is announced to have, more than `max` bytes, or is not RESP.
    pub(crate) fn follow(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            let start = at;
            at = self.step_through(bytes, at)?;
            self.read += (at - start) as u64;
            if self.read > self.max {
                return Err(self.too_large(self.read));
            }
            if self.owed == 0 && self.step == Step::Type {
                // A reply ended: the next one starts from nothing.
                self.read = 0;
            }
        }
        Ok(())
    }

    /// Advances within `bytes` from `at` until the end of the bytes or of the current element,
    /// and returns where it stopped.
    fn step_through(&mut self, bytes: &[u8], mut at: usize) -> io::Result<usize> {
        match self.step {
            Step::Type => {
                let kind = bytes[at];
                if self.owed == 0 {
                    self.owed = 1;
                }
                self.step = match kind {
                    b'*' | b'%' | b'~' | b'>' | b'|' | b'$' | b'!' | b'=' => Step::Header {
                        kind,
                        length: 0,
                        negative: false,
                    },
                    b'+' | b'-' | b':' | b',' | b'_' | b'#' | b'(' => Step::Line,
                    other => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the server sent a reply of unknown type (byte {other:#04x})"),
                        ));
                    }
                };
                // An attribute comes before the element it describes, which it does not take.
                if kind != b'|' {
                    self.owed -= 1;
                }
                Ok(at + 1)
            }
            Step::Line => match bytes[at..].iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.step = Step::Type;
                    Ok(at + end + 1)
                }
                None => Ok(bytes.len()),
            },
            Step::Payload { left } => {
                let take = left.min((bytes.len() - at) as u64);
                self.step = match left - take {
                    0 => Step::Type,
                    left => Step::Payload { left },
                };
                Ok(at + take as usize)
            }
            Step::Header {
                kind,
                mut length,
                mut negative,
            } => {
                let start = at;
                while at < bytes.len() {
                    let byte = bytes[at];
                    at += 1;
                    match byte {
                        b'0'..=b'9' => {
                            length = length
                                .saturating_mul(10)
                                .saturating_add(u64::from(byte - b'0'));
                        }
                        b'-' => negative = true,
                        b'\r' => {}
                        b'\n' => {
                            // The header's own bytes are in `read` once this step returns.
                            let header = self.read + (at - start) as u64;
                            self.header_ended(kind, length, negative, header)?;
                            return Ok(at);
                        }
                        other => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("the server sent a malformed length (byte {other:#04x})"),
                            ));
                        }
                    }
                }
                self.step = Step::Header {
                    kind,
                    length,
                    negative,
                };
                Ok(at)
            }
        }
    }

    /// A header's line ended: what it announces is owed. `read_by_then` bounds the bytes of
    /// the reply so far from above (the caller adds the exact count).
    fn header_ended(
        &mut self,
        kind: u8,
        length: u64,
        negative: bool,
        read_by_then: u64,
    ) -> io::Result<()> {
        self.step = Step::Type;
        if negative {
            // A null (`$-1`, `*-1`): a whole element.
            return Ok(());
        }
        match kind {
            b'$' | b'!' | b'=' => {
                // The payload and its CRLF.
                let left = length.saturating_add(2);
                let announced = read_by_then.saturating_add(left);
                if announced > self.max {
                    return Err(self.too_large(announced));
                }
                self.step = Step::Payload { left };
            }
            b'%' | b'|' => self.owed = self.owed.saturating_add(length.saturating_mul(2)),
            _ => self.owed = self.owed.saturating_add(length),
        }
        Ok(())
    }

    fn too_large(&self, size: u64) -> io::Error {
        ReplyTooLarge {
            size,
            max: self.max,
        }
        .into_io_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 64;

    /// Feeds `replies` to a tracker cut at `cut`, and returns whether it accepted everything.
    fn accepts_split_at(replies: &[u8], cut: usize) -> io::Result<ReplyTracker> {
        let mut tracker = ReplyTracker::new(LIMIT);
        tracker.follow(&replies[..cut])?;
        tracker.follow(&replies[cut..])?;
        Ok(tracker)
    }

    /// Accepts `replies` cut at every byte boundary, and one byte at a time, ending between
    /// replies.
    fn assert_accepted(replies: &[u8]) {
        for cut in 0..=replies.len() {
            let tracker = accepts_split_at(replies, cut)
                .unwrap_or_else(|e| panic!("cut at {cut}: {e}: {:?}", show(replies)));
            assert_eq!(
                (tracker.owed, tracker.step, tracker.read),
                (0, Step::Type, 0),
                "cut at {cut}: ends between replies"
            );
        }
        let mut tracker = ReplyTracker::new(LIMIT);
        for byte in replies.chunks(1) {
            tracker.follow(byte).unwrap();
        }
        assert_eq!((tracker.owed, tracker.read), (0, 0));
    }

    /// The errors `replies` cut at every byte boundary are refused with.
    fn refusals(replies: &[u8]) -> Vec<String> {
        (0..=replies.len())
            .map(|cut| match accepts_split_at(replies, cut) {
                Ok(_) => panic!("cut at {cut}: accepted {:?}", show(replies)),
                Err(e) => e.to_string(),
            })
            .collect()
    }

    fn show(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn resp2_replies_split_anywhere_are_followed() {
        assert_accepted(b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n$0\r\n\r\n");
        assert_accepted(b"*3\r\n$3\r\nfoo\r\n:1\r\n*2\r\n+a\r\n$-1\r\n*0\r\n");
    }

    #[test]
    fn nested_aggregates_end_where_their_last_element_ends() {
        let nested = b"*2\r\n*2\r\n*1\r\n:1\r\n$2\r\nab\r\n*0\r\n";
        assert_accepted(nested);
        // Just short of its last element, the reply is still owed.
        let mut tracker = ReplyTracker::new(LIMIT);
        tracker.follow(&nested[..nested.len() - 4]).unwrap();
        assert_eq!(tracker.owed, 1);
        tracker.follow(&nested[nested.len() - 4..]).unwrap();
        assert_eq!(tracker.owed, 0);
    }

    #[test]
    fn resp3_types_are_followed() {
        assert_accepted(b"%2\r\n+a\r\n:1\r\n$1\r\nb\r\n~2\r\n#t\r\n_\r\n");
        assert_accepted(b",3.14\r\n(12345678901234567890\r\n#f\r\n_\r\n");
        assert_accepted(b"!9\r\nERR oops!\r\n=8\r\ntxt:abcd\r\n");
        // An attribute, then the reply it describes.
        assert_accepted(b"|1\r\n+ttl\r\n:3\r\n*2\r\n:1\r\n:2\r\n");
    }

    #[test]
    fn push_messages_are_replies_of_their_own() {
        let message = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        let mut stream = message.to_vec();
        stream.extend_from_slice(b"+PONG\r\n");
        stream.extend_from_slice(message);
        assert_accepted(&stream);
    }

    #[test]
    fn the_limit_applies_to_each_reply_not_to_the_connection() {
        let value = [b'x'; 50];
        let mut reply = b"$50\r\n".to_vec();
        reply.extend_from_slice(&value);
        reply.extend_from_slice(b"\r\n");
        assert_eq!(reply.len(), 57, "under the limit of {LIMIT}");
        let mut tracker = ReplyTracker::new(LIMIT);
        for _ in 0..100 {
            tracker.follow(&reply).unwrap();
        }
    }

    #[test]
    fn a_bulk_header_over_the_limit_fails_before_its_payload() {
        let mut tracker = ReplyTracker::new(LIMIT);
        let error = tracker.follow(b"$8589934592\r\n").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            error.to_string(),
            "reply of at least 8589934607 bytes exceeds max_reply_size (64 bytes)"
        );
        assert!(error.get_ref().unwrap().is::<ReplyTooLarge>());
        // Announced inside an aggregate: the reply's bytes so far count too.
        for refused in refusals(b"*2\r\n$10\r\n0123456789\r\n$50\r\n") {
            assert_eq!(
                refused,
                "reply of at least 78 bytes exceeds max_reply_size (64 bytes)"
            );
        }
    }

    #[test]
    fn a_reply_of_many_small_elements_over_the_limit_fails() {
        let mut reply = b"*100\r\n".to_vec();
        for _ in 0..100 {
            reply.extend_from_slice(b":1\r\n");
        }
        for refused in refusals(&reply) {
            assert!(
                refused.contains("exceeds max_reply_size (64 bytes)"),
                "{refused}"
            );
        }
        // A count that claims more elements than memory holds only costs their bytes.
        let mut tracker = ReplyTracker::new(LIMIT);
        tracker.follow(b"*18446744073709551615\r\n").unwrap();
        let error = tracker
            .follow(&[b'_', b'\r', b'\n'].repeat(30))
            .unwrap_err();
        assert!(error.get_ref().unwrap().is::<ReplyTooLarge>());
    }

    #[test]
    fn a_huge_line_without_crlf_fails_at_the_limit() {
        let mut tracker = ReplyTracker::new(LIMIT);
        tracker.follow(b"+").unwrap();
        tracker.follow(&[b'a'; 63]).unwrap();
        let error = tracker.follow(b"a").unwrap_err();
        assert_eq!(
            error.to_string(),
            "reply of at least 65 bytes exceeds max_reply_size (64 bytes)"
        );
        // And a header whose digits never end.
        let mut tracker = ReplyTracker::new(LIMIT);
        tracker.follow(b"*").unwrap();
        assert!(tracker.follow(&[b'0'; 100]).is_err());
    }

    #[test]
    fn what_is_not_resp_fails_at_once() {
        let mut tracker = ReplyTracker::new(LIMIT);
        let error = tracker.follow(b"HTTP/1.1 400 Bad Request\r\n").unwrap_err();
        assert!(
            error.to_string().contains("unknown type (byte 0x48)"),
            "{error}"
        );
        let error = ReplyTracker::new(LIMIT).follow(b"$12x\r\n").unwrap_err();
        assert!(error.to_string().contains("malformed length"), "{error}");
    }

    /// The tracker's cost, printed: `cargo test --release --lib reply_limit -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_per_reply() {
        let mut small = Vec::new();
        for _ in 0..10_000 {
            small.extend_from_slice(b"$5\r\nhello\r\n+OK\r\n:12345\r\n*2\r\n$3\r\nfoo\r\n$-1\r\n");
        }
        let mut large = b"$1048576\r\n".to_vec();
        large.extend(std::iter::repeat_n(b'x', 1 << 20));
        large.extend_from_slice(b"\r\n");
        for (name, stream, replies) in
            [("small replies", &small, 40_000), ("1 MiB bulk", &large, 1)]
        {
            let mut tracker = ReplyTracker::new(u64::MAX);
            let rounds = 200;
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                // In 16 KiB reads, as a socket delivers them.
                for read in stream.chunks(16 * 1024) {
                    tracker.follow(std::hint::black_box(read)).unwrap();
                }
            }
            let took = started.elapsed();
            let bytes = (stream.len() * rounds) as f64;
            println!(
                "{name}: {:.1} ns per reply, {:.2} GB/s",
                took.as_nanos() as f64 / (replies * rounds) as f64,
                bytes / took.as_secs_f64() / 1e9
            );
        }
    }

    #[test]
    fn the_limit_error_is_recognised_through_redis_rs() {
        let too_large = ReplyTooLarge { size: 10, max: 5 };
        let error = redis::RedisError::from(too_large.into_io_error());
        assert!(ReplyTooLarge::is_cause_of(&error));
        assert!(error.is_io_error());
        assert_eq!(error.to_string(), too_large.to_string());
        let closed = redis::RedisError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!ReplyTooLarge::is_cause_of(&closed));
    }
}
