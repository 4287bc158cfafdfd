//! Watching a socket: a duplicate handle that asks the kernel whether the peer closed it,
//! and the stream wrapper that records EOF and errors as the driver reads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::link::{LinkHealth, LinkState};
use crate::reply_limit::{ReplyTooLarge, ReplyTracker};

/// A second handle on a connection's socket, to ask the kernel whether the peer has closed it.
///
/// The driver task may not have run since an RST or FIN arrived; a non-blocking `MSG_PEEK`
/// of one byte sees it anyway, costs one system call and consumes nothing. Owning a duplicate
/// descriptor (not the raw number) means the answer is always about this socket, even after
/// the driver has closed its own.
#[derive(Debug)]
pub(crate) struct PeerProbe(socket2::Socket);

impl PeerProbe {
    pub(crate) fn new<'s, S>(socket: &'s S) -> io::Result<Self>
    where
        SockRef<'s>: From<&'s S>,
    {
        SockRef::from(socket).try_clone().map(PeerProbe)
    }

    /// Closes the connection both ways now (a FIN to the peer), whoever else holds the socket.
    pub(crate) fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }

    /// What the kernel holds for the socket, without consuming anything.
    pub(crate) fn peer_state(&self) -> PeerState {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        match self.0.peek(&mut byte) {
            Ok(0) => PeerState::Closed,
            Ok(_) => PeerState::Unread,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                PeerState::Quiet
            }
            Err(_) => PeerState::Closed,
        }
    }

    /// Takes the first bytes waiting in the socket (non-blocking: none if nothing waits).
    /// Only for a connection that failed and is given up: the driver never sees them.
    pub(crate) fn take_unread(&self) -> Vec<u8> {
        let mut buf = [0; 128];
        match io::Read::read(&mut &self.0, &mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(_) => Vec::new(),
        }
    }

    /// Whether the peer closed (EOF) or reset the socket.
    #[cfg(test)]
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_state() == PeerState::Closed
    }
}

/// What a peek at a socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// Nothing to read: open and silent.
    Quiet,
    /// The peer closed (EOF) or reset it.
    Closed,
    /// Bytes the driver has not read yet: a late reply, or, under TLS, a `close_notify` alert
    /// that precedes the close itself. Not a close, but not proof of a working socket.
    Unread,
}

/// A stream that reports EOF and I/O errors, and the bytes written, to a shared [`LinkHealth`],
/// and fails a read that takes a reply over `max_reply_size` (see `reply_limit.rs`).
#[derive(Debug)]
pub(crate) struct TrackedStream<S> {
    inner: S,
    health: Arc<LinkHealth>,
    replies: ReplyTracker,
}

impl<S> TrackedStream<S> {
    /// A socket outside the pool (a subscription's, a sentinel's): its replies bounded alike,
    /// its health its own, not one of the pool's working links.
    pub(crate) fn standalone(inner: S, max_reply_size: u64) -> (Self, Arc<LinkHealth>) {
        let health = Arc::new(LinkHealth::default());
        (Self::new(inner, health.clone(), max_reply_size), health)
    }

    pub(crate) fn new(inner: S, health: Arc<LinkHealth>, max_reply_size: u64) -> Self {
        Self {
            inner,
            health,
            replies: ReplyTracker::new(max_reply_size),
        }
    }

    fn note<T>(&self, result: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(e)) = result {
            self.health.failed(e);
        }
    }

    fn note_written(&self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Ready(Ok(n)) => {
                self.health.written.fetch_add(*n as u64, Ordering::AcqRel);
            }
            other => self.note(other),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(&result);
        if let Poll::Ready(Ok(())) = result {
            let read = &buf.filled()[before..];
            if read.is_empty() && buf.remaining() > 0 {
                self.health.close(LinkState::Eof);
            } else {
                self.health.capture(read);
                // Before redis-rs buffers them: the failed read ends the connection's driver,
                // and the bytes read go with it.
                if let Err(e) = self.replies.follow(read) {
                    let cause = e.get_ref().and_then(|e| e.downcast_ref::<ReplyTooLarge>());
                    match cause {
                        Some(&too_large) => {
                            let _ = self.health.too_large.set(too_large);
                            self.health.close(LinkState::ReplyTooLarge);
                        }
                        // Not RESP: the server, or something posing as it, is broken.
                        None => self.health.close(LinkState::Failed),
                    }
                    return Poll::Ready(Err(e));
                }
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_written(&result);
        result
    }

    /// Forwarded, so the driver writes every queued command in one system call, as it does
    /// on a bare socket.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_written(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&result);
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
