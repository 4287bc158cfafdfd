use std::ffi::OsString;
use std::time::Duration;

use super::*;

const SECRET: &str = "s3cr3t-pa55";

fn error_of(builder: ConfigBuilder) -> String {
    builder.build().expect_err("invalid").to_string()
}

/// Fixed pairs, as the environment would list them.
fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

fn from_env(prefix: &str, vars: Vec<(OsString, OsString)>) -> Result<Config, ConfigError> {
    env::builder_from_vars(prefix, &vars).and_then(ConfigBuilder::build)
}

fn env_error(pairs: &[(&str, &str)]) -> String {
    from_env("", env(pairs)).expect_err("invalid").to_string()
}

#[test]
fn every_bad_setting_says_what_to_fix() {
    let url = "redis://127.0.0.1";
    let cases: Vec<(ConfigBuilder, &str)> = vec![
        (
            Config::builder(url).max_size(0),
            "invalid setting max_size: 0 must be from 1 to 10000",
        ),
        (
            Config::builder(url).max_size(u32::MAX),
            "must be from 1 to 10000",
        ),
        (
            Config::builder(url).max_subscriptions(0),
            "invalid setting max_subscriptions: 0 must be from 1 to 10000",
        ),
        (
            Config::builder(url).max_subscriptions(10_001),
            "invalid setting max_subscriptions: 10001 must be from 1 to 10000",
        ),
        (
            Config::builder(url).max_size(4).min_idle(5),
            "min_idle (5) exceeds max_size (4); lower min_idle or raise max_size",
        ),
        (
            Config::builder(url).checkout_timeout(Duration::ZERO),
            "invalid setting checkout_timeout: 0 must be greater than zero",
        ),
        (
            Config::builder(url).connect_timeout(Duration::ZERO),
            "invalid setting connect_timeout",
        ),
        (
            Config::builder(url).response_timeout(Duration::MAX),
            "invalid setting response_timeout",
        ),
        (
            Config::builder(url).validation_timeout(Duration::from_secs(2)),
            "make validation_timeout shorter than checkout_timeout",
        ),
        (
            Config::builder(url).idle_timeout(Duration::ZERO),
            "idle_timeout: must be greater than zero and at most a year, or None to disable",
        ),
        (
            Config::builder(url).max_lifetime(Duration::MAX),
            "max_lifetime: must be greater than zero and at most a year, or None",
        ),
        (
            Config::builder(url).lifetime_jitter(0.9),
            "0.9 is outside 0.0 to 0.5",
        ),
        (
            Config::builder(url).max_reply_size(0),
            "invalid setting max_reply_size: 0 bytes must be from 1048576 (1 MiB) to 4294967296",
        ),
        (
            Config::builder(url).max_reply_size(u64::MAX),
            "invalid setting max_reply_size",
        ),
        (
            Config::builder(url).lifetime_jitter(f64::NAN),
            "NaN is outside 0.0 to 0.5",
        ),
        (
            Config::builder(url).keepalive(Keepalive {
                retries: 0,
                ..Keepalive::default()
            }),
            "retries 0 must be from 1 to 127",
        ),
        (
            Config::builder(url).keepalive(Keepalive {
                retries: 200,
                ..Keepalive::default()
            }),
            "retries 200 must be from 1 to 127",
        ),
        (
            Config::builder(url).keepalive(Keepalive {
                idle: Duration::from_secs(36_000),
                ..Keepalive::default()
            }),
            "idle 36000s must be whole seconds from 1 to 32767",
        ),
        (
            Config::builder(url).keepalive(Keepalive {
                interval: Duration::from_millis(500),
                ..Keepalive::default()
            }),
            "interval 500ms must be whole seconds",
        ),
        (
            Config::builder(url).tcp_user_timeout(Duration::from_secs(60 * 24 * 60 * 60)),
            "tcp_user_timeout: 5184000s must be from 1 ms to 4294967295 ms",
        ),
        (Config::builder(url).name(""), "name: must be 1 to 64"),
        (Config::builder(url).name("a\nb"), "name: must be 1 to 64"),
        (
            Config::builder(url).startup(StartupMode::WaitFor(Duration::ZERO)),
            "WaitFor needs a non-zero duration",
        ),
        (
            Config::builder(url).breaker(BreakerPolicy {
                failure_rate: 1.5,
                ..BreakerPolicy::default()
            }),
            "failure_rate 1.5 must be in (0, 1]",
        ),
        (
            Config::builder(url).breaker(BreakerPolicy {
                consecutive_failures: 0,
                ..BreakerPolicy::default()
            }),
            "consecutive_failures, min_calls and trial_successes must be at least 1",
        ),
        (
            Config::builder(url).breaker(BreakerPolicy {
                window: Duration::MAX,
                ..BreakerPolicy::default()
            }),
            "at most a year",
        ),
        (
            Config::builder(url).reconnect_backoff_max(Duration::from_millis(10)),
            "is below reconnect_backoff_min",
        ),
        (
            Config::builder(url).probe_interval(Duration::MAX),
            "invalid setting probe_interval",
        ),
    ];
    for (builder, expected) in cases {
        let message = error_of(builder);
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
}

#[test]
fn forever_at_start_up_is_allowed() {
    let config = Config::builder("redis://127.0.0.1")
        .startup(StartupMode::WaitFor(Duration::MAX))
        .build()
        .unwrap();
    assert_eq!(config.startup(), StartupMode::WaitFor(Duration::MAX));
}

#[test]
fn bad_urls_are_rejected_naming_the_part_without_repeating_it() {
    let cases = [
        (
            format!("localhost:{SECRET}"),
            "scheme \"localhost\" is not redis://",
        ),
        (
            format!("http://u:{SECRET}@host"),
            "is not redis://, rediss://, redis+unix:// or redis+sentinel://",
        ),
        (
            format!("rediss://u:{SECRET}@host#nocheck"),
            "the only fragment a rediss:// URL takes is #insecure",
        ),
        (format!("redis://:{SECRET}@"), "empty host"),
        (
            format!("redis://:{SECRET}#x@host:6379"),
            "percent-encode them as %23 %2F %3F %40",
        ),
        (
            format!("redis://:{SECRET}/x@host:6379"),
            "percent-encode them as %23 %2F %3F %40",
        ),
        (
            format!("redis://:{SECRET}%ZZ@host:6379"),
            "the password has a % not followed by two hex digits: write a literal % as %25",
        ),
        (
            format!("redis://{SECRET}%4@host:6379"),
            "the user name has a % not followed by two hex digits",
        ),
        (format!("not a url {SECRET}"), "expected redis://"),
        ("redis://host:99999".to_owned(), "invalid port number"),
        (
            format!("redis://host/{SECRET}"),
            "the database in the path is not a number",
        ),
        (
            "redis://host/99999999999999999999".to_owned(),
            "the database number in the path is too large",
        ),
        (
            "redis://:%ff%fe@host".to_owned(),
            "the password is not valid UTF-8",
        ),
        (
            format!("redis+unix:///run/redis.sock?db={SECRET}"),
            "the database in db= is not a number",
        ),
        (
            format!("redis://host?protocol={SECRET}"),
            "invalid protocol version: use protocol=resp2 or protocol=resp3",
        ),
        (
            format!("redis://host/?password={SECRET}"),
            "credentials in the query (password=) are ignored",
        ),
        (
            format!("redis://host/?pass={SECRET}"),
            "credentials in the query (pass=) are ignored",
        ),
        (
            "redis://ro@host".to_owned(),
            "a user name without a password",
        ),
        (
            "redis+unix:///run/redis.sock?user=ro".to_owned(),
            "a user name without a password",
        ),
        (
            format!("redis://host/#{SECRET}"),
            "a fragment (#...) has no meaning",
        ),
        (
            format!("redis://host/?{SECRET}=1"),
            "a query parameter is not one redis-rs reads from the URL",
        ),
        (
            "redis://host/?db=2".to_owned(),
            "put the database in the path",
        ),
        ("redis+sentinel://s1,s2:26380".to_owned(), "no master name"),
        (
            format!("redis+sentinel://s1:{SECRET}/mymaster"),
            "sentinel 1 has an invalid port",
        ),
        (
            format!("redis+sentinel://s1,:{SECRET}/mymaster"),
            "sentinel 2 has no host",
        ),
        (
            format!("redis+sentinel://s1/mymaster/{SECRET}"),
            "the database in the path is not a number",
        ),
        (
            format!("redis+sentinel://s1/mymaster/0/{SECRET}"),
            "the path holds more than the master name",
        ),
        (
            format!("redis+sentinel://s1/mymaster?password={SECRET}"),
            "password= is not read from a sentinel URL",
        ),
        (
            "redis+sentinel://s1/mymaster?sentinel_username=ro".to_owned(),
            "sentinel_username= without sentinel_password=",
        ),
        (
            format!("redis+sentinel://s1/mymaster?{SECRET}=1"),
            "a query parameter is not one a sentinel URL takes",
        ),
        (
            format!("redis+sentinel://ro@s1/mymaster#{SECRET}"),
            "a fragment (#...) has no meaning",
        ),
        (
            "redis+sentinel://ro@s1/mymaster".to_owned(),
            "a user name without a password",
        ),
        (
            "redis+sentinel://[::1/mymaster".to_owned(),
            "an IPv6 address lacks its ']'",
        ),
        (
            "redis+sentinel://fe80::1:26379/mymaster".to_owned(),
            "an IPv6 address goes in brackets",
        ),
        (
            "redis+sentinel://h1;h2:26379/mymaster".to_owned(),
            "sentinel 1 has no valid host",
        ),
        (
            "redis+sentinel://127.0.0.1.:26379/mymaster".to_owned(),
            "sentinel 1 has no valid host",
        ),
    ];
    for (url, expected) in cases {
        let message = error_of(Config::builder(url.clone()));
        assert!(
            message.contains(expected),
            "{url}: {message:?} lacks {expected:?}"
        );
        assert!(!message.contains(SECRET), "{message:?} leaks the password");
        let builder = format!("{:?}", Config::builder(url.clone()));
        assert!(!builder.contains(SECRET), "{builder} leaks the password");
    }
}

#[test]
fn every_credential_form_is_redacted_everywhere() {
    let urls = [
        format!("redis://user:{SECRET}@10.0.0.1:6380/2"),
        format!("redis://:{SECRET}@10.0.0.1"),
        format!("redis://:{SECRET}%25%41@10.0.0.1"),
        format!("redis+unix:///run/redis.sock?db=1&user=app&pass={SECRET}"),
        format!("unix:///run/redis.sock?pass={SECRET}"),
        format!("redis+sentinel://:{SECRET}@s1,s2/mymaster"),
        format!("redis+sentinel://app:{SECRET}@s1/mymaster/3?sentinel_password={SECRET}"),
        format!("redis+sentinel://s1/mymaster?sentinel_username=mon&sentinel_password={SECRET}"),
    ];
    for url in urls {
        let builder = Config::builder(url.clone());
        assert!(!format!("{builder:?}").contains(SECRET), "{url}");
        let config = builder.build().unwrap();
        for shown in [
            config.redacted_url().to_owned(),
            format!("{config:?}"),
            format!("{config:#?}"),
            redact_url(&url),
        ] {
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }
    assert_eq!(
        redact_url(&format!("redis://user:{SECRET}@10.0.0.1:6380/2")),
        "redis://user:***@10.0.0.1:6380/2"
    );
    assert_eq!(
        redact_url(&format!("redis://h/#{SECRET}")),
        "redis://h/",
        "a fragment is dropped"
    );
    // The password still reaches the handshake.
    let config = Config::builder(format!("redis://user:{SECRET}@10.0.0.1:6380/2"))
        .build()
        .unwrap();
    assert_eq!(config.connection.redis_settings().password(), Some(SECRET));
    assert_eq!(config.connection.redis_settings().db(), 2);
}

#[test]
fn a_sentinel_url_and_the_builder_form_configure_the_same_pool() {
    let from_url = Config::builder(format!(
        "redis+sentinel://app:{SECRET}@10.0.0.1:26380,sentinel.internal,[::1]:26381/cache%2Dprimary/3\
         ?sentinel_username=mon&sentinel_password=other-{SECRET}&protocol=resp3"
    ))
    .build()
    .unwrap();
    let sentinel = from_url.sentinel.as_deref().expect("a sentinel pool");
    assert_eq!(sentinel.master_name(), "cache-primary");
    assert_eq!(
        sentinel.sentinels,
        [
            ("10.0.0.1".to_owned(), 26380),
            ("sentinel.internal".to_owned(), DEFAULT_SENTINEL_PORT),
            ("::1".to_owned(), 26381)
        ]
    );
    assert_eq!(
        sentinel.sentinel_auth,
        Some((Some("mon".to_owned()), format!("other-{SECRET}")))
    );
    let nodes = from_url.connection.redis_settings();
    assert_eq!(
        (nodes.username(), nodes.password(), nodes.db()),
        (Some("app"), Some(SECRET), 3)
    );
    assert_eq!(nodes.protocol(), redis::ProtocolVersion::RESP3);
    assert_eq!(
        from_url.redacted_url(),
        "redis+sentinel://app:***@10.0.0.1:26380,sentinel.internal:26379,[::1]:26381/cache-primary/3\
         ?sentinel_username=mon&sentinel_password=***"
    );

    let built = Config::sentinel(
        Sentinel::new("cache-primary")
            .sentinel("10.0.0.1", 26380)
            .sentinel("sentinel.internal", DEFAULT_SENTINEL_PORT)
            .sentinel("::1", 26381)
            .sentinel_credentials("mon", format!("other-{SECRET}"))
            .redis_credentials("app", SECRET)
            .database(3),
    )
    .build()
    .unwrap();
    let again = built.sentinel.as_deref().unwrap();
    assert_eq!(again.sentinels, sentinel.sentinels);
    let bracketed = Sentinel::new("m").sentinel("[::1]", 26381);
    assert_eq!(bracketed.sentinels, [("::1".to_owned(), 26381)]);
    assert_eq!(again.sentinel_auth, sentinel.sentinel_auth);
    assert_eq!(built.connection.redis_settings().db(), 3);
    assert_eq!(
        built.redacted_url(),
        "redis+sentinel://app:***@10.0.0.1:26380,sentinel.internal:26379,[::1]:26381/cache-primary/3\
         ?sentinel_username=mon&sentinel_password=***"
    );
}

#[test]
fn a_sentinel_builder_without_sentinels_or_name_is_refused() {
    let cases = [
        (Sentinel::new("mymaster"), "no sentinel to ask"),
        (
            Sentinel::new("").sentinel("s1", 26379),
            "the master name must be non-empty",
        ),
        (
            Sentinel::new("my master\n").sentinel("s1", 26379),
            "without spaces",
        ),
        (
            Sentinel::new("mymaster").sentinel("s1", 0),
            "sentinel 1 has port 0",
        ),
        (
            Sentinel::new("mymaster").sentinel("", 26379),
            "sentinel 1 has no valid host",
        ),
        (
            Sentinel::new("mymaster").sentinel("s1", 26379).database(-1),
            "the database number must not be negative",
        ),
    ];
    for (sentinel, expected) in cases {
        let message = error_of(Config::sentinel(sentinel));
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
}

#[test]
fn from_env_reads_every_variable() {
    let config = from_env(
        "",
        env(&[
            ("REDIS_URL", "redis://127.0.0.1:7000"),
            ("REDIS_GUARD_POOL_NAME", "sessions"),
            ("REDIS_GUARD_MAX_SIZE", "32"),
            ("REDIS_GUARD_MIN_IDLE", "4"),
            ("REDIS_GUARD_MAX_SUBSCRIPTIONS", "200"),
            ("REDIS_GUARD_CHECKOUT_TIMEOUT_MS", "2000"),
            ("REDIS_GUARD_CONNECT_TIMEOUT_MS", "300"),
            ("REDIS_GUARD_RESPONSE_TIMEOUT_MS", "700"),
            ("REDIS_GUARD_VALIDATION_TIMEOUT_MS", "100"),
            ("REDIS_GUARD_VALIDATION_BYPASS_MS", "0"),
            ("REDIS_GUARD_IDLE_TIMEOUT_MS", "none"),
            ("REDIS_GUARD_MAX_LIFETIME_MS", "600000"),
            ("REDIS_GUARD_LIFETIME_JITTER", "0.1"),
            ("REDIS_GUARD_KEEPALIVE", "60,10,4"),
            ("REDIS_GUARD_TCP_USER_TIMEOUT_MS", "off"),
            ("REDIS_GUARD_STARTUP", "wait_for:5000"),
            (
                "REDIS_GUARD_BREAKER",
                "consecutive_failures=3, window_ms=30000",
            ),
            ("REDIS_GUARD_PROBE_INTERVAL_MS", "5000"),
            ("REDIS_GUARD_RECONNECT_BACKOFF_MIN_MS", "100"),
            ("REDIS_GUARD_RECONNECT_BACKOFF_MAX_MS", "800"),
            ("REDIS_GUARD_MAX_REPLY_SIZE_BYTES", "16777216"),
        ]),
    )
    .unwrap();
    assert_eq!(config.name(), "sessions");
    assert_eq!((config.max_size(), config.min_idle()), (32, 4));
    assert_eq!(config.max_subscriptions(), 200);
    assert_eq!(config.checkout_timeout(), Duration::from_secs(2));
    assert_eq!(config.connect_timeout(), Duration::from_millis(300));
    assert_eq!(config.response_timeout(), Duration::from_millis(700));
    assert_eq!(config.validation_timeout(), Duration::from_millis(100));
    assert_eq!(config.validation_bypass(), Duration::ZERO);
    assert_eq!(config.idle_timeout(), None);
    assert_eq!(config.max_lifetime(), Some(Duration::from_secs(600)));
    assert_eq!(config.lifetime_jitter(), 0.1);
    assert_eq!(config.max_reply_size(), 16 * 1024 * 1024);
    assert_eq!(
        config.keepalive(),
        Some(Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            retries: 4
        })
    );
    assert_eq!(config.tcp_user_timeout(), None);
    assert_eq!(
        config.startup(),
        StartupMode::WaitFor(Duration::from_secs(5))
    );
    assert_eq!(config.breaker().consecutive_failures, 3);
    assert_eq!(config.breaker().window, Duration::from_secs(30));
    assert_eq!(
        config.breaker().min_calls,
        BreakerPolicy::default().min_calls
    );
    assert_eq!(config.probe_interval(), Duration::from_secs(5));
    assert_eq!(config.reconnect_backoff_max(), Duration::from_millis(800));
}

#[test]
fn from_env_takes_a_prefix_per_pool() {
    let lookup = env(&[
        ("SESSIONS_REDIS_URL", "redis://127.0.0.1:7001"),
        ("SESSIONS_REDIS_GUARD_MAX_SIZE", "3"),
        ("REDIS_GUARD_MAX_SIZE", "99"),
    ]);
    let config = from_env("SESSIONS_", lookup).unwrap();
    assert_eq!(config.max_size(), 3);
}

#[test]
fn from_env_errors_name_the_variable_that_was_set() {
    let url = ("REDIS_URL", "redis://127.0.0.1");
    assert_eq!(
        env_error(&[]),
        "invalid setting REDIS_URL: not set; set it to redis://host:port (or redis+unix:///path)"
    );
    assert_eq!(
        env_error(&[url, ("REDIS_GUARD_MAX_SIZE", "ten")]),
        "invalid setting REDIS_GUARD_MAX_SIZE: the value is not a whole number"
    );
    assert_eq!(
        env_error(&[url, ("REDIS_GUARD_MAX_SIZE", "12345678901234567890123")]),
        "invalid setting REDIS_GUARD_MAX_SIZE: the value is too large"
    );
    assert_eq!(
        env_error(&[url, ("REDIS_GUARD_MAX_SIZE", "0")]),
        "invalid setting REDIS_GUARD_MAX_SIZE: 0 must be from 1 to 10000"
    );
    // validation_timeout was never set: the variable that was set is named.
    let related = env_error(&[url, ("REDIS_GUARD_CHECKOUT_TIMEOUT_MS", "100")]);
    assert!(
        related.starts_with("invalid setting REDIS_GUARD_CHECKOUT_TIMEOUT_MS:"),
        "{related}"
    );
    assert!(
        related.contains("shorter than REDIS_GUARD_CHECKOUT_TIMEOUT_MS"),
        "{related}"
    );
    assert_eq!(
        env_error(&[url, ("REDIS_GUARD_STARTUP", "eventually")]),
        "invalid setting REDIS_GUARD_STARTUP: the value is not lazy, fail_fast or \
         wait_for:<milliseconds>"
    );
    let bad_url = env_error(&[("REDIS_URL", &format!("redis://ro@host?x={SECRET}"))]);
    assert!(bad_url.contains("(in REDIS_URL)"), "{bad_url}");
    assert!(!bad_url.contains(SECRET), "{bad_url}");
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = Config::builder("redis://127.0.0.1").build().unwrap();
    assert_eq!(config.name(), defaults::NAME);
    assert_eq!(config.max_size(), defaults::MAX_SIZE);
    assert_eq!(config.max_subscriptions(), defaults::MAX_SUBSCRIPTIONS);
    assert_eq!(config.checkout_timeout(), defaults::CHECKOUT_TIMEOUT);
    assert_eq!(config.validation_bypass(), defaults::VALIDATION_BYPASS);
    assert_eq!(config.idle_timeout(), Some(defaults::IDLE_TIMEOUT));
    assert_eq!(config.startup(), StartupMode::Lazy);
    assert_eq!(config.keepalive(), Some(Keepalive::default()));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Durations as users write them: zero, small, typical, huge, `Duration::MAX`.
    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0u64..10_000).prop_map(Duration::from_millis),
            (0u64..100_000_000).prop_map(Duration::from_secs),
            any::<u64>().prop_map(Duration::from_nanos),
            any::<u64>().prop_map(Duration::from_secs),
        ]
    }

    fn optional(d: impl Strategy<Value = Duration>) -> impl Strategy<Value = Option<Duration>> {
        prop_oneof![Just(None), d.prop_map(Some)]
    }

    fn keepalive() -> impl Strategy<Value = Option<Keepalive>> {
        prop_oneof![
            Just(None),
            (duration(), duration(), any::<u32>()).prop_map(|(idle, interval, retries)| {
                Some(Keepalive {
                    idle,
                    interval,
                    retries,
                })
            })
        ]
    }

    fn builder() -> impl Strategy<Value = ConfigBuilder> {
        (
            (
                any::<u32>(),
                any::<u32>(),
                duration(),
                duration(),
                duration(),
            ),
            (
                duration(),
                duration(),
                optional(duration()),
                optional(duration()),
            ),
            (any::<f64>(), keepalive(), optional(duration()), duration()),
            (duration(), duration(), duration(), 0u32..20, any::<f64>()),
        )
            .prop_map(|(a, b, c, d)| {
                let (max_size, min_idle, checkout, connect, response) = a;
                let (validation, bypass, idle, lifetime) = b;
                let (jitter, keepalive, user_timeout, probe) = c;
                let (wait_for, backoff_min, backoff_max, failures, rate) = d;
                Config::builder("redis://127.0.0.1:6379")
                    .max_size(max_size % 20_000)
                    .min_idle(min_idle % 50)
                    .checkout_timeout(checkout)
                    .connect_timeout(connect)
                    .response_timeout(response)
                    .validation_timeout(validation)
                    .validation_bypass(bypass)
                    .idle_timeout(idle)
                    .max_lifetime(lifetime)
                    .lifetime_jitter(jitter)
                    .keepalive(keepalive)
                    .tcp_user_timeout(user_timeout)
                    .probe_interval(probe)
                    .startup(StartupMode::WaitFor(wait_for))
                    .reconnect_backoff_min(backoff_min)
                    .reconnect_backoff_max(backoff_max)
                    .breaker(BreakerPolicy {
                        consecutive_failures: failures,
                        failure_rate: rate,
                        ..BreakerPolicy::default()
                    })
            })
    }

    /// What the pool does with a config's durations: deadlines from now, jittered lifetimes.
    fn exercise_arithmetic(config: &Config) {
        let now = std::time::Instant::now();
        let _ = now + config.checkout_timeout();
        let _ = now + config.connect_timeout();
        let _ = now + config.probe_interval();
        let _ = now + config.reconnect_backoff_max().mul_f64(1.15);
        let _ = config
            .response_timeout()
            .saturating_add(Duration::from_secs(365 * 24 * 3600));
        if let Some(lifetime) = config.max_lifetime() {
            let _ = now + lifetime.mul_f64(1.0 - config.lifetime_jitter());
        }
        if let Some(idle) = config.idle_timeout() {
            let _ = now + idle;
        }
        let _ = now + config.breaker().window;
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any builder input is refused with a message, or builds a config whose socket
        /// options the kernel accepts and whose durations the pool's arithmetic can take.
        #[test]
        fn any_builder_input_builds_a_usable_config_or_says_why_not(builder in builder()) {
            match builder.build() {
                Err(e) => prop_assert!(!e.to_string().is_empty()),
                Ok(config) => {
                    exercise_arithmetic(&config);
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    crate::transport::apply_socket_options_for_test(&socket, &config)
                        .map_err(|e| TestCaseError::fail(format!("kernel refused {config:?}: {e}")))?;
                }
            }
        }

        /// Any environment value is refused naming its variable, or builds a config.
        #[test]
        fn any_environment_value_builds_or_names_its_variable(
            variable in prop::sample::select(vec![
                "REDIS_GUARD_MAX_SIZE", "REDIS_GUARD_CHECKOUT_TIMEOUT_MS", "REDIS_GUARD_KEEPALIVE",
                "REDIS_GUARD_STARTUP", "REDIS_GUARD_BREAKER", "REDIS_GUARD_IDLE_TIMEOUT_MS",
                "REDIS_GUARD_LIFETIME_JITTER", "REDIS_GUARD_TCP_USER_TIMEOUT_MS",
                "REDIS_GUARD_POOL_NAME", "REDIS_URL",
            ]),
            value in prop_oneof![
                "\\PC{0,40}",
                "[0-9]{1,30}",
                "[0-9]{1,6},[0-9]{1,6},[0-9]{1,4}",
                "wait_for:[0-9]{1,25}",
            ],
        ) {
            let mut pairs = vec![("REDIS_URL", "redis://127.0.0.1:6379")];
            pairs.retain(|(k, _)| *k != variable);
            pairs.push((variable, value.as_str()));
            match from_env("", env(&pairs)) {
                Ok(config) => exercise_arithmetic(&config),
                Err(e) => {
                    let message = e.to_string();
                    let names_it = message.contains(variable)
                        || (variable == "REDIS_GUARD_POOL_NAME" && message.contains("REDIS_GUARD_POOL_NAME"));
                    prop_assert!(names_it, "{variable}={value:?}: {message}");
                }
            }
        }
    }
}

#[test]
fn a_prefixed_pool_is_named_after_its_prefix() {
    let vars = env(&[
        ("SESSIONS_REDIS_URL", "redis://127.0.0.1:7001"),
        ("JOB_QUEUE_REDIS_URL", "redis://127.0.0.1:7002"),
        ("JOB_QUEUE_REDIS_GUARD_POOL_NAME", "jobs"),
    ]);
    assert_eq!(
        from_env("SESSIONS_", vars.clone()).unwrap().name(),
        "sessions"
    );
    assert_eq!(from_env("JOB_QUEUE_", vars).unwrap().name(), "jobs");
    let plain = env(&[("REDIS_URL", "redis://127.0.0.1:7000")]);
    assert_eq!(from_env("", plain).unwrap().name(), defaults::NAME);
}

#[test]
fn a_misspelt_variable_is_refused_with_the_closest_one() {
    for (misspelt, meant) in [
        (
            "REDIS_GUARD_CHECKOUT_TIMEOUT",
            "REDIS_GUARD_CHECKOUT_TIMEOUT_MS",
        ),
        ("REDIS_GUARD_MAXSIZE", "REDIS_GUARD_MAX_SIZE"),
        ("REDIS_GUARD_TLS_CA", "REDIS_GUARD_TLS_CA_FILE"),
        ("REDIS_GUARD_NAME", "REDIS_GUARD_POOL_NAME"),
        ("redis_guard_max_size", "REDIS_GUARD_MAX_SIZE"),
        ("Redis_Guard_Tls_Ca_File", "REDIS_GUARD_TLS_CA_FILE"),
    ] {
        let message = env_error(&[("REDIS_URL", "redis://127.0.0.1"), (misspelt, "500")]);
        assert!(
            message.contains(&format!("invalid setting {misspelt}: is not a setting"))
                && message.ends_with(&format!("did you mean {meant}?")),
            "{misspelt}: {message}"
        );
    }
    // Another pool's variables are not this one's business.
    let vars = env(&[
        ("REDIS_URL", "redis://127.0.0.1"),
        ("SESSIONS_REDIS_GUARD_TYPO", "1"),
    ]);
    assert!(from_env("", vars).is_ok());
}

#[test]
fn no_value_is_repeated_in_an_error_and_durations_name_their_unit() {
    let pasted = "hunter2";
    for variable in [
        "REDIS_GUARD_MAX_SIZE",
        "REDIS_GUARD_CHECKOUT_TIMEOUT_MS",
        "REDIS_GUARD_IDLE_TIMEOUT_MS",
        "REDIS_GUARD_LIFETIME_JITTER",
        "REDIS_GUARD_KEEPALIVE",
        "REDIS_GUARD_MODE",
        "REDIS_GUARD_STARTUP",
        "REDIS_GUARD_BREAKER",
        "REDIS_GUARD_HEDGE_READS",
        "REDIS_GUARD_TLS_INSECURE",
    ] {
        let message = env_error(&[("REDIS_URL", "redis://127.0.0.1"), (variable, pasted)]);
        assert!(message.contains(variable), "{message}");
        assert!(
            !message.contains(pasted),
            "{variable} echoed the value: {message}"
        );
    }
    let message = env_error(&[
        ("REDIS_URL", "redis://127.0.0.1"),
        ("REDIS_GUARD_CHECKOUT_TIMEOUT_MS", "1.5s"),
    ]);
    assert!(message.contains("of milliseconds"), "{message}");
}

#[test]
fn code_adds_to_a_builder_from_the_environment() {
    let vars = env(&[
        ("REDIS_URL", "redis://127.0.0.1:7000"),
        ("REDIS_GUARD_MAX_SIZE", "4"),
        ("REDIS_GUARD_MIN_IDLE", "3"),
    ]);
    let config = env::builder_from_vars("", &vars)
        .unwrap()
        .name("cache")
        .on_connect(|_| Box::pin(async { Ok(()) }))
        .build()
        .unwrap();
    assert_eq!((config.name(), config.max_size()), ("cache", 4));
    // What code sets wins; an error from build() still names the variable that was set.
    let message = env::builder_from_vars("", &vars)
        .unwrap()
        .max_size(2)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("invalid setting REDIS_GUARD_MIN_IDLE:"),
        "{message}"
    );
}

#[test]
fn a_pool_name_takes_no_invisible_characters() {
    for name in [
        "cache\u{202e}lanigiro",
        "a\u{200b}b",
        "x\u{feff}",
        "tag\u{e0041}",
    ] {
        let message = error_of(Config::builder("redis://127.0.0.1").name(name));
        assert!(
            message.contains("invisible format characters"),
            "{name:?}: {message}"
        );
    }
    assert!(
        Config::builder("redis://127.0.0.1")
            .name("cache-é-1")
            .build()
            .is_ok()
    );
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use crate::testkit::TestCertificates;

    #[test]
    fn tls_comes_from_its_variables() {
        let certs = TestCertificates::generate(&["redis.internal"]).unwrap();
        let (cert, key) = certs.client();
        let ca = certs.ca();
        let vars = env(&[
            ("REDIS_URL", "rediss://:pa55@10.0.0.7:6380"),
            ("REDIS_GUARD_TLS_CA_FILE", ca.to_str().unwrap()),
            ("REDIS_GUARD_TLS_CERT_FILE", cert.to_str().unwrap()),
            ("REDIS_GUARD_TLS_KEY_FILE", key.to_str().unwrap()),
            ("REDIS_GUARD_TLS_SERVER_NAME", "redis.internal"),
        ]);
        let config = from_env("", vars).unwrap();
        assert!(config.uses_tls());
        // Shown as it connects: TLS, verified.
        assert_eq!(config.redacted_url(), "rediss://:***@10.0.0.7:6380");
        assert!(
            format!("{config:?}").contains("tls: \"verified\""),
            "{config:?}"
        );

        let half = from_env(
            "SESSIONS_",
            env(&[
                ("SESSIONS_REDIS_URL", "rediss://10.0.0.7"),
                ("SESSIONS_REDIS_GUARD_TLS_CERT_FILE", cert.to_str().unwrap()),
            ]),
        )
        .expect_err("a certificate without its key")
        .to_string();
        assert!(
            half.starts_with("invalid setting SESSIONS_REDIS_GUARD_TLS_CERT_FILE:")
                && half.contains(" and SESSIONS_REDIS_GUARD_TLS_KEY_FILE; set the other"),
            "{half}"
        );
    }

    /// Platforms set TLS variables for every service: only the URL's scheme turns TLS on.
    #[test]
    fn tls_variables_on_a_url_without_tls_are_refused_and_false_is_nothing() {
        let certs = TestCertificates::generate(&["redis.internal"]).unwrap();
        let ca = certs.ca();
        let refused = env_error(&[
            ("REDIS_URL", "redis://10.0.0.7"),
            ("REDIS_GUARD_TLS_CA_FILE", ca.to_str().unwrap()),
        ]);
        assert!(
            refused.starts_with("invalid setting REDIS_GUARD_TLS_CA_FILE: configures TLS, but REDIS_URL is not a rediss:// URL"),
            "{refused}"
        );
        let plain = from_env(
            "",
            env(&[
                ("REDIS_URL", "redis://10.0.0.7"),
                ("REDIS_GUARD_TLS_INSECURE", "false"),
            ]),
        )
        .unwrap();
        assert!(!plain.uses_tls());
        assert_eq!(plain.redacted_url(), "redis://10.0.0.7");
    }

    /// A path is quoted as it is, even where it holds a setting's name.
    #[test]
    fn a_path_in_an_error_is_never_rewritten() {
        let path = "/srv/hostname_certs/checkout_timeout/ca.pem";
        let error = env_error(&[
            ("REDIS_URL", "rediss://10.0.0.7"),
            ("REDIS_GUARD_CHECKOUT_TIMEOUT_MS", "900"),
            ("REDIS_GUARD_TLS_CA_FILE", path),
        ]);
        assert!(
            error.starts_with("invalid setting REDIS_GUARD_TLS_CA_FILE:") && error.contains(path),
            "{error}"
        );
        let error = env_error(&[
            ("REDIS_URL", "rediss://10.0.0.7"),
            ("REDIS_GUARD_TLS_SERVER_NAME", "bad name"),
        ]);
        assert!(error.contains("is not a valid DNS name"), "{error}");
    }

    /// Each file's error names the variable that gave that file.
    #[test]
    fn a_bad_tls_file_is_blamed_on_its_own_variable() {
        let certs = TestCertificates::generate(&["redis.internal"]).unwrap();
        let (cert, key) = certs.client();
        let one_line = certs.dir().join("one-line.key");
        let pem = std::fs::read_to_string(&key).unwrap();
        std::fs::write(&one_line, pem.replace('\n', " ")).unwrap();
        let missing = certs.dir().join("missing.pem");
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let (one_line, missing) = (one_line.to_str().unwrap(), missing.to_str().unwrap());
        let cases = [
            (
                [
                    ("REDIS_GUARD_TLS_CERT_FILE", cert),
                    ("REDIS_GUARD_TLS_KEY_FILE", one_line),
                ],
                "REDIS_GUARD_TLS_KEY_FILE",
            ),
            (
                [
                    ("REDIS_GUARD_TLS_CERT_FILE", missing),
                    ("REDIS_GUARD_TLS_KEY_FILE", key),
                ],
                "REDIS_GUARD_TLS_CERT_FILE",
            ),
            (
                [
                    ("REDIS_GUARD_TLS_CA_FILE", missing),
                    ("REDIS_GUARD_TLS_SERVER_NAME", "redis.internal"),
                ],
                "REDIS_GUARD_TLS_CA_FILE",
            ),
        ];
        for (set, blamed) in cases {
            let mut pairs = vec![("REDIS_URL", "rediss://10.0.0.7")];
            pairs.extend(set);
            let error = env_error(&pairs);
            assert!(
                error.starts_with(&format!("invalid setting {blamed}:")),
                "{blamed}: {error}"
            );
        }
    }

    #[test]
    fn verification_is_off_only_by_its_own_setting_and_it_shows() {
        let refused = env_error(&[("REDIS_URL", "rediss://10.0.0.7#insecure")]);
        assert!(
            refused.contains("#insecure alone does not turn certificate verification off")
                && refused.contains("(in REDIS_URL)"),
            "{refused}"
        );
        let config = from_env(
            "",
            env(&[
                ("REDIS_URL", "rediss://10.0.0.7#insecure"),
                ("REDIS_GUARD_TLS_INSECURE", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(config.redacted_url(), "rediss://10.0.0.7#insecure");
        assert!(config.verifies_no_certificate());

        // The setting alone, on a redis:// URL: shown as rediss, and as insecure.
        let config = Config::builder("redis://:pa55@10.0.0.7:6380")
            .tls(TlsSettings {
                insecure: true,
                ..TlsSettings::default()
            })
            .build()
            .unwrap();
        assert_eq!(
            config.redacted_url(),
            "rediss://:***@10.0.0.7:6380#insecure"
        );
        let shown = format!("{config:?}");
        assert!(
            shown.contains("insecure (certificates not verified)"),
            "{shown}"
        );
        let builder = format!(
            "{:?}",
            Config::builder("redis://h").tls(TlsSettings {
                insecure: true,
                ..TlsSettings::default()
            })
        );
        assert!(builder.contains("insecure: true"), "{builder}");
    }

    /// The PEM parser's own errors quote the line they choke on: for a key with its line
    /// breaks lost, the whole key, as decimal bytes in `Debug` and text in `Display`.
    #[test]
    fn a_broken_pem_file_is_named_and_never_quoted() {
        let certs = TestCertificates::generate(&["localhost"]).unwrap();
        let (cert, key) = certs.client();
        let dir = tempfile::tempdir().unwrap();
        for (what, original) in [("key", &key), ("cert", &cert), ("ca", &certs.ca())] {
            let pem = std::fs::read_to_string(original).unwrap();
            let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            for (form, broken) in [
                ("one line", pem.replace('\n', "")),
                ("spaces", pem.replace('\n', " ")),
                ("escaped", pem.replace('\n', "\\n")),
            ] {
                let file = dir.path().join(format!("{what}-{form}.pem"));
                std::fs::write(&file, &broken).unwrap();
                let settings = match what {
                    "key" => TlsSettings {
                        client_cert: Some((cert.clone(), file.clone())),
                        ..TlsSettings::default()
                    },
                    "cert" => TlsSettings {
                        client_cert: Some((file.clone(), key.clone())),
                        ..TlsSettings::default()
                    },
                    _ => TlsSettings {
                        ca_file: Some(file.clone()),
                        ..TlsSettings::default()
                    },
                };
                let error = Config::builder("rediss://localhost")
                    .tls(settings)
                    .build()
                    .unwrap_err();
                let shown = format!("{error} {error:?}");
                assert!(
                    shown.contains(&file.display().to_string())
                        && shown.contains("are the line breaks intact?"),
                    "{what} ({form}): {shown}"
                );
                // Neither the text nor its bytes: no 8 characters of any base64 line, and no
                // run of decimal byte values.
                for line in &body {
                    for chunk in line.as_bytes().chunks(8).filter(|c| c.len() == 8) {
                        let chunk = std::str::from_utf8(chunk).unwrap();
                        assert!(
                            !shown.contains(chunk),
                            "{what} ({form}) quoted the file: {shown}"
                        );
                    }
                }
                assert!(!shown.contains("45, 45, 45"), "{what} ({form}): {shown}");
            }
        }
    }
}

#[test]
fn allowed_primaries_match_networks_hosts_and_exact_addresses() {
    let sentinel = Sentinel::new("mymaster")
        .sentinel("10.0.0.1", 26379)
        .allow_primaries([
            "10.0.0.0/8",
            "fd00::/8",
            "redis-1.internal",
            "cache.internal:6380",
            "[::1]:6379",
        ]);
    sentinel.validate().unwrap();
    for (host, port, allowed) in [
        ("10.2.3.4", 6379, true),
        ("11.0.0.1", 6379, false),
        ("fd12::1", 6379, true),
        ("REDIS-1.internal", 7000, true),
        ("redis-1.internal.evil", 6379, false),
        ("cache.internal", 6380, true),
        ("cache.internal", 6379, false),
        ("::1", 6379, true),
        ("0:0::1", 6379, true),
        ("::1", 6380, false),
    ] {
        assert_eq!(sentinel.allows(host, port), allowed, "{host}:{port}");
    }
    assert!(
        Sentinel::new("m").allows("anything", 1),
        "no list: anywhere"
    );
    for bad in ["10.0.0.0/33", "host:0", "a b", "", "evil\n.example"] {
        let err = Sentinel::new("m")
            .sentinel("10.0.0.1", 26379)
            .allow_primaries([bad])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("allowed primary 1"), "{bad:?}: {err}");
    }
    let parsed = Config::builder(
        "redis+sentinel://10.0.0.1/mymaster?allowed_primaries=10.0.0.0/8,cache.internal:6380",
    )
    .build()
    .unwrap();
    let sentinel = parsed.sentinel.as_ref().unwrap();
    assert!(sentinel.allows("10.9.9.9", 6379) && !sentinel.allows("192.168.0.1", 6379));
}
