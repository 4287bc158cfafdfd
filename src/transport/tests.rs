use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connect::{ATTEMPT_DELAY, SocketOptions, connect_any, connect_tcp};
use super::*;
use crate::config::Config;

#[tokio::test]
async fn peer_close_is_recorded_as_eof() {
    let (client, mut server) = tokio::io::duplex(64);
    let health = Arc::new(LinkHealth::default());
    let mut stream = TrackedStream::new(client, health.clone(), 1024);
    server.write_all(b"+PONG\r\n").await.unwrap();
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).await.unwrap();
    assert!(health.is_open(), "data is not a close");
    drop(server);
    assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    assert_eq!(health.state(), LinkState::Eof);
}

#[test]
fn an_error_line_then_a_close_is_why_the_connect_failed() {
    let health = LinkHealth::default();
    health.capture(b"-ERR max number of clients reached\r\n");
    assert_eq!(
        health.turned_away(b""),
        None,
        "still open: a reply, not a refusal"
    );
    health.close(LinkState::Eof);
    assert_eq!(
        health.turned_away(b"").as_deref(),
        Some("ERR max number of clients reached")
    );
    let unread = LinkHealth::default();
    assert_eq!(
        unread
            .turned_away(b"-DENIED protected\x07 mode\r\n")
            .as_deref(),
        Some("DENIED protected? mode")
    );
    assert_eq!(unread.turned_away(b"+OK\r\n"), None);
    assert_eq!(unread.turned_away(b"-ERR cut"), None, "an unfinished line");
    let replied = LinkHealth::default();
    replied.capture(b"-ERR unknown subcommand 'SETINFO'.\r\n");
    replied.close(LinkState::Eof);
    assert_eq!(
        replied.turned_away(b""),
        None,
        "an error reply, then a kill"
    );
}

#[test]
fn first_close_reason_wins() {
    let health = LinkHealth::default();
    health.close(LinkState::Failed);
    health.close(LinkState::DriverEnded);
    assert_eq!(health.state(), LinkState::Failed);
}

#[tokio::test]
async fn probe_sees_a_reset_before_anyone_reads() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let probe = PeerProbe::new(&client).unwrap();
    assert!(!probe.peer_closed(), "an open, silent socket is not closed");
    SockRef::from(&server)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(server);
    let mut closed = false;
    for _ in 0..1000 {
        closed = probe.peer_closed();
        if closed {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(closed);
}

/// A listener whose accept queue is full drops new SYNs: a black-holed address on loopback.
fn black_hole() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    // Fill the queue; the kernel may complete one or two handshakes before it drops SYNs.
    let fillers = (0..3)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.connect_timeout(&addr.into(), Duration::from_millis(100))
                .ok()
                .map(|()| s.into())
        })
        .collect();
    (listener, fillers)
}

#[tokio::test]
async fn a_black_holed_address_does_not_hide_a_live_one() {
    let (dead, _fillers) = black_hole();
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = SocketOptions {
        keepalive: None,
        tcp_user_timeout: None,
    };
    let started = std::time::Instant::now();
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        connect_any(
            vec![dead.local_addr().unwrap(), live.local_addr().unwrap()],
            options,
        ),
    )
    .await
    .expect("the live address connected")
    .unwrap();
    assert_eq!(stream.peer_addr().unwrap(), live.local_addr().unwrap());
    let took = started.elapsed();
    assert!(
        took >= ATTEMPT_DELAY && took < ATTEMPT_DELAY * 3,
        "the second address started after the attempt delay, took {took:?}"
    );
}

#[tokio::test]
async fn a_refused_address_moves_on_at_once() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = SocketOptions {
        keepalive: None,
        tcp_user_timeout: None,
    };
    let started = std::time::Instant::now();
    let stream = connect_any(vec![closed_addr, live.local_addr().unwrap()], options)
        .await
        .unwrap();
    assert_eq!(stream.peer_addr().unwrap(), live.local_addr().unwrap());
    assert!(started.elapsed() < ATTEMPT_DELAY, "{:?}", started.elapsed());
}

#[tokio::test]
async fn socket_options_are_applied() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Config::builder("redis://127.0.0.1").build().unwrap();
    let stream = connect_tcp("127.0.0.1", port, &config).await.unwrap();
    let sock = SockRef::from(&stream);
    assert!(stream.nodelay().unwrap());
    assert!(sock.keepalive().unwrap());
    #[cfg(target_os = "linux")]
    {
        assert_eq!(
            sock.tcp_keepalive_time().unwrap(),
            config.keepalive().unwrap().idle
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(sock.tcp_user_timeout().unwrap(), config.tcp_user_timeout());
    }
}
