//! Pub/sub fan-out that survives a Redis restart: a subscriber on `chat.*` prints what is
//! published, and is told when it missed messages.
//!
//! ```text
//! cargo run --example pubsub --features testkit
//! ```
//!
//! It publishes a numbered message every 100 ms, restarts Redis after a second, and stops
//! after three: the subscriber reports the gap, subscribes again on its own, and goes on.

use std::time::Duration;

use redis::AsyncCommands;
use redis_guard::testkit::RedisServer;
use redis_guard::{Config, PubSubEvent, RedisGuard, Subscription};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut server = RedisServer::start()?;
    let guard = RedisGuard::connect(Config::builder(server.url()).name("chat").build()?).await?;

    let mut subscriber = guard
        .subscribe(Subscription::new().pattern("chat.*"))
        .await?;
    let listener = tokio::spawn(async move {
        while let Some(event) = subscriber.next().await {
            match event {
                PubSubEvent::Message(message) => {
                    let text: String = message.get_payload().unwrap_or_default();
                    println!("{}: {text}", message.get_channel_name());
                }
                PubSubEvent::Gap(gap) => println!(
                    "-- subscribed again after {:?} ({}): messages in between were missed --",
                    gap.lasted, gap.cause
                ),
                _ => {}
            }
        }
    });

    let publisher = guard.clone();
    let publishing = tokio::spawn(async move {
        for n in 1.. {
            if let Ok(mut conn) = publisher.get().await {
                let _: Result<i64, _> = conn.publish("chat.lobby", format!("message {n}")).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("-- restarting Redis --");
    tokio::task::block_in_place(|| server.restart())?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    publishing.abort();
    // Closing the pool ends the subscriber's stream, and with it the listener.
    guard.close(Duration::from_secs(1)).await;
    listener.await?;
    Ok(())
}
