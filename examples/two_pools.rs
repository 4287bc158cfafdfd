//! Two Redis pools in one handler, chosen by type from the router's state: a cache and a
//! session store, each its own Redis.
//!
//! ```text
//! cargo run --example two_pools --features testkit
//! curl -s localhost:3001/login?user=ada
//! curl -s localhost:3001/profile?session=<the id it printed>
//! ```

use axum::Router;
use axum::extract::{FromRef, Query};
use axum::routing::get;
use redis::AsyncCommands;
use redis_guard::testkit::RedisServer;
use redis_guard::{Config, Health, RedisFrom, RedisGuard};

/// One type per pool: `RedisFrom<Cache>` and `RedisFrom<Sessions>` cannot be mixed up.
#[derive(Clone)]
struct Cache(RedisGuard);
#[derive(Clone)]
struct Sessions(RedisGuard);

impl AsRef<RedisGuard> for Cache {
    fn as_ref(&self) -> &RedisGuard {
        &self.0
    }
}

impl AsRef<RedisGuard> for Sessions {
    fn as_ref(&self) -> &RedisGuard {
        &self.0
    }
}

#[derive(Clone, FromRef)]
struct AppState {
    cache: Cache,
    sessions: Sessions,
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
}

async fn login(
    mut sessions: RedisFrom<Sessions>,
    Query(login): Query<Login>,
) -> Result<String, redis_guard::Error> {
    let id = format!("{:016x}", fastrand::u64(..));
    let _: () = sessions
        .set_ex(format!("session:{id}"), &login.user, 3600)
        .await?;
    Ok(id)
}

#[derive(serde::Deserialize)]
struct Profile {
    session: String,
}

async fn profile(
    mut sessions: RedisFrom<Sessions>,
    mut cache: RedisFrom<Cache>,
    Query(profile): Query<Profile>,
) -> Result<String, redis_guard::Error> {
    let user: Option<String> = sessions.get(format!("session:{}", profile.session)).await?;
    let Some(user) = user else {
        return Ok("no such session".into());
    };
    let views: i64 = cache.incr(format!("profile-views:{user}"), 1).await?;
    Ok(format!("{user}, viewed {views} times"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (cache_server, sessions_server) = (RedisServer::start()?, RedisServer::start()?);
    let cache =
        RedisGuard::connect(Config::builder(cache_server.url()).name("cache").build()?).await?;
    let sessions = RedisGuard::connect(
        Config::builder(sessions_server.url())
            .name("sessions")
            .build()?,
    )
    .await?;
    let health = Health::new()
        .require(sessions.clone())
        .optional(cache.clone());
    let app = Router::new()
        .route("/login", get(login))
        .route("/profile", get(profile))
        .with_state(AppState {
            cache: Cache(cache),
            sessions: Sessions(sessions),
        })
        .merge(health.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("serving on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
