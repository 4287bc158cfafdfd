//! Where the primary is when Redis runs under Sentinel: [`Sentinel`], and its URL form
//! `redis+sentinel://[user:password@]host[:port][,host[:port]...]/master_name[/db]`, the
//! spelling of redis-py's sentinel URLs and of several other clients.
//!
//! The user and password in the URL are the Redis nodes' credentials (what the primary
//! wants); the sentinels' own, when they require one, go in `sentinel_username=` and
//! `sentinel_password=` query parameters, as redis-rs keeps the two apart. A sentinel without a
//! port listens on 26379.

use std::fmt;

use redis::RedisConnectionInfo;

use super::ConfigError;
use super::url::invalid;

/// The port a sentinel listens on unless told otherwise.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

const SENTINEL_FORM: &str =
    "redis+sentinel://[user:password@]host[:port][,host[:port]...]/master_name[/db]";

/// A Redis primary found through Sentinel: the sentinels to ask and the master name they
/// know it by, with the credentials and database for the Redis nodes.
///
/// The pool asks the sentinels for the primary on every connect, follows `+switch-master`
/// announcements (and polls, in case one is missed), and retires every connection to a
/// demoted primary at once. Build a pool on it with [`Config::sentinel`](super::Config::sentinel),
/// or write it as a URL:
/// `redis+sentinel://[user:password@]host[:port][,host[:port]...]/master_name[/db]`, with the
/// Redis nodes' credentials before the hosts and the sentinels' own in `sentinel_username=`
/// and `sentinel_password=` (`rediss+sentinel://` for TLS to both).
///
/// The sentinels are trusted like the primary itself unless [`Sentinel::allow_primaries`]
/// is set: the pool connects wherever they say, and sends the nodes' password there. An
/// address they name is held to the rules of a configured host (an IP address or a DNS name,
/// a port from 1 to 65535) either way.
///
/// ```
/// use redis_guard::config::Sentinel;
/// use redis_guard::Config;
///
/// let sentinel = Sentinel::new("mymaster")
///     .sentinel("10.0.0.1", 26379)
///     .sentinel("10.0.0.2", 26379)
///     .redis_password("s3cret");
/// let config = Config::sentinel(sentinel).build().unwrap();
/// assert_eq!(
///     config.redacted_url(),
///     "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2:26379/mymaster"
/// );
///
/// // The same, as a URL.
/// let config = Config::builder("redis+sentinel://:s3cret@10.0.0.1,10.0.0.2/mymaster")
///     .build()
///     .unwrap();
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct Sentinel {
    pub(crate) master_name: String,
    pub(crate) sentinels: Vec<(String, u16)>,
    /// What the sentinels want: a user name (or none) and a password.
    pub(crate) sentinel_auth: Option<(Option<String>, String)>,
    /// What the Redis nodes want: credentials, database, protocol.
    pub(crate) redis: RedisConnectionInfo,
    /// Where the sentinels may send the pool; empty: anywhere.
    pub(crate) allowed_primaries: Vec<String>,
}

impl fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted(false))
    }
}

impl Sentinel {
    /// The primary the sentinels monitor under `master_name` (their `sentinel monitor`
    /// name). Add the sentinels with [`Sentinel::sentinel`].
    pub fn new(master_name: impl Into<String>) -> Self {
        Sentinel {
            master_name: master_name.into(),
            sentinels: Vec::new(),
            sentinel_auth: None,
            redis: RedisConnectionInfo::default(),
            allowed_primaries: Vec::new(),
        }
    }

    /// The only primaries the pool may connect to, whatever the sentinels say. Each entry is
    /// an IP network (`10.0.0.0/8`, `fd00::/8`), an IP address or a host name (any port), or
    /// an exact `host:port` (`[v6]:port`); host names match exactly, without resolving.
    ///
    /// Without it the sentinels are trusted like the primary itself: whoever answers on a
    /// sentinel's port can send the pool to a server of its choosing, which then receives the
    /// nodes' password (`AUTH`) and the application's commands. With it, a primary named
    /// outside the list is never connected to: the pool logs it at WARN, keeps the primary
    /// it knows, and with none known reports Redis unavailable. In the URL form:
    /// `?allowed_primaries=10.0.0.0/8,redis-1.internal:6379`.
    ///
    /// ```
    /// use redis_guard::config::Sentinel;
    ///
    /// let sentinel = Sentinel::new("mymaster")
    ///     .sentinel("10.0.0.1", 26379)
    ///     .allow_primaries(["10.0.0.0/8", "redis-1.internal:6379"]);
    /// assert!(redis_guard::Config::sentinel(sentinel).build().is_ok());
    ///
    /// let typo = Sentinel::new("mymaster")
    ///     .sentinel("10.0.0.1", 26379)
    ///     .allow_primaries(["10.0.0.0/33"]);
    /// let error = redis_guard::Config::sentinel(typo).build().unwrap_err();
    /// assert!(error.to_string().contains("allowed primary 1"));
    /// ```
    pub fn allow_primaries<I, S>(mut self, primaries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_primaries
            .extend(primaries.into_iter().map(Into::into));
        self
    }

    /// Whether the pool may connect to a primary at `host:port`: yes when no allowlist is
    /// set, else if an entry matches.
    pub(crate) fn allows(&self, host: &str, port: u16) -> bool {
        self.allowed_primaries.is_empty()
            || self
                .allowed_primaries
                .iter()
                .filter_map(|entry| AllowedPrimary::parse(entry))
                .any(|allowed| allowed.matches(host, port))
    }

    /// One more sentinel to ask. They are asked all at once; the first answer counts, unless
    /// another sentinel already named a primary under a newer configuration epoch.
    pub fn sentinel(mut self, host: impl Into<String>, port: u16) -> Self {
        let host: String = host.into();
        // `[::1]` as in a URL, or `::1`: the same address.
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(bare) => bare.to_owned(),
            None => host,
        };
        self.sentinels.push((host, port));
        self
    }

    /// The sentinels' password (`requirepass` in their configuration), for the default
    /// user.
    ///
    /// ```
    /// let sentinel = redis_guard::config::Sentinel::new("mymaster")
    ///     .sentinel("10.0.0.1", 26379)
    ///     .sentinel_password("sentinel-secret");
    /// assert!(!format!("{sentinel:?}").contains("sentinel-secret"));
    /// ```
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_auth = Some((None, password.into()));
        self
    }

    /// The sentinels' ACL user and password.
    pub fn sentinel_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.sentinel_auth = Some((Some(username.into()), password.into()));
        self
    }

    /// The Redis nodes' password, for the default user.
    pub fn redis_password(mut self, password: impl Into<String>) -> Self {
        self.redis = self.redis.set_password(password.into());
        self
    }

    /// The Redis nodes' ACL user and password.
    pub fn redis_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.redis = self
            .redis
            .set_username(username.into())
            .set_password(password.into());
        self
    }

    /// The database to `SELECT` on the primary (0 unless set).
    pub fn database(mut self, db: i64) -> Self {
        self.redis = self.redis.set_db(db);
        self
    }

    /// The master name the sentinels know the primary by.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// Checks what the builder form could not: a master name, at least one sentinel, real
    /// hosts and ports, a database number.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.master_name;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!(
                "the master name must be non-empty, without spaces; expected {SENTINEL_FORM}"
            )));
        }
        if self.sentinels.is_empty() {
            return Err(invalid(format!(
                "no sentinel to ask; expected {SENTINEL_FORM}"
            )));
        }
        for (i, (host, port)) in self.sentinels.iter().enumerate() {
            if !is_host(host) {
                return Err(invalid(format!("sentinel {} has no valid host", i + 1)));
            }
            if *port == 0 {
                return Err(invalid(format!("sentinel {} has port 0", i + 1)));
            }
        }
        if self.redis.db() < 0 {
            return Err(invalid("the database number must not be negative"));
        }
        for (i, entry) in self.allowed_primaries.iter().enumerate() {
            if AllowedPrimary::parse(entry).is_none() {
                return Err(invalid(format!(
                    "allowed primary {} is not an IP network (10.0.0.0/8), an address, a host \
                     name or host:port",
                    i + 1
                )));
            }
        }
        if matches!(&self.sentinel_auth, Some((Some(user), _)) if user.is_empty()) {
            return Err(invalid("the sentinels' user name is empty"));
        }
        Ok(())
    }

    /// The sentinels' connection settings: their credentials, RESP2 (for the subscription).
    pub(crate) fn sentinel_connection_info(&self) -> RedisConnectionInfo {
        let info = RedisConnectionInfo::default();
        match &self.sentinel_auth {
            None => info,
            Some((None, password)) => info.set_password(password),
            Some((Some(user), password)) => info.set_username(user).set_password(password),
        }
    }

    /// The URL form with every secret replaced by `***`.
    pub(crate) fn redacted(&self, tls: bool) -> String {
        let scheme = if tls {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        let user = match (self.redis.username(), self.redis.password()) {
            (Some(user), _) => format!("{}:***@", escape(user)),
            (None, Some(_)) => ":***@".to_owned(),
            (None, None) => String::new(),
        };
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(host, port)| match host.contains(':') {
                true => format!("[{host}]:{port}"),
                false => format!("{host}:{port}"),
            })
            .collect();
        let mut out = format!(
            "{scheme}://{user}{}/{}",
            hosts.join(","),
            escape(&self.master_name)
        );
        if self.redis.db() != 0 {
            out.push_str(&format!("/{}", self.redis.db()));
        }
        match &self.sentinel_auth {
            None => {}
            Some((None, _)) => out.push_str("?sentinel_password=***"),
            Some((Some(user), _)) => out.push_str(&format!(
                "?sentinel_username={}&sentinel_password=***",
                escape(user)
            )),
        }
        out
    }
}

/// One entry of [`Sentinel::allow_primaries`].
enum AllowedPrimary {
    Network(std::net::IpAddr, u8),
    Host(String),
    HostPort(String, u16),
}

impl AllowedPrimary {
    fn parse(entry: &str) -> Option<Self> {
        let entry = entry.trim();
        if let Some((ip, prefix)) = entry.split_once('/') {
            let ip: std::net::IpAddr = ip.parse().ok()?;
            let prefix: u8 = prefix.parse().ok()?;
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return (prefix <= bits).then_some(AllowedPrimary::Network(ip, prefix));
        }
        if is_host(entry) {
            return Some(AllowedPrimary::Host(entry.to_ascii_lowercase()));
        }
        let (host, port) = match entry.strip_prefix('[') {
            Some(v6) => {
                let (host, tail) = v6.split_once(']')?;
                (host, tail.strip_prefix(':')?)
            }
            None => entry.rsplit_once(':')?,
        };
        let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
        is_host(host).then(|| AllowedPrimary::HostPort(host.to_ascii_lowercase(), port))
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        match self {
            AllowedPrimary::Network(network, prefix) => host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| in_network(ip, *network, *prefix)),
            AllowedPrimary::Host(allowed) => same_host(allowed, host),
            AllowedPrimary::HostPort(allowed, allowed_port) => {
                *allowed_port == port && same_host(allowed, host)
            }
        }
    }
}

/// Names compared without case; addresses as addresses (`::1` is `0:0::1`).
fn same_host(allowed: &str, host: &str) -> bool {
    match (
        allowed.parse::<std::net::IpAddr>(),
        host.parse::<std::net::IpAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => allowed.eq_ignore_ascii_case(host),
    }
}

fn in_network(ip: std::net::IpAddr, network: std::net::IpAddr, prefix: u8) -> bool {
    use std::net::IpAddr;
    let (ip, network, bits) = match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => (u32::from(ip) as u128, u32::from(net) as u128, 32),
        (IpAddr::V6(ip), IpAddr::V6(net)) => (u128::from(ip), u128::from(net), 128),
        _ => return false,
    };
    let host_bits = bits - u32::from(prefix);
    host_bits >= bits || (ip >> host_bits) == (network >> host_bits)
}

/// An IP address, or a DNS name: labels of letters, digits, `-` and `_`, not starting or
/// ending with `-`, and no empty label. Hosts the sentinels announce are held to the same
/// rule as hosts in the configuration.
pub(crate) fn is_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn escape(part: &str) -> String {
    url::form_urlencoded::byte_serialize(part.as_bytes()).collect()
}

/// A sentinel URL taken apart: `None` if `raw` is not one. `tls` is `Some(insecure)` for
/// `rediss+sentinel://` (TLS to the sentinels and to the nodes).
pub(crate) struct ParsedSentinelUrl {
    pub(crate) sentinel: Sentinel,
    pub(crate) tls: Option<bool>,
}

/// Parses a `redis+sentinel://` (or `rediss+sentinel://`) URL; `Ok(None)` for other schemes.
/// Messages never repeat a value from the URL.
pub(crate) fn parse_sentinel_url(raw: &str) -> Result<Option<ParsedSentinelUrl>, ConfigError> {
    let raw = raw.trim();
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Ok(None);
    };
    let tls = match scheme {
        "redis+sentinel" | "redis-sentinel" => false,
        "rediss+sentinel" | "rediss-sentinel" => true,
        _ => return Ok(None),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (rest, None),
    };
    if tls && !cfg!(feature = "tls") {
        return Err(invalid(
            "rediss+sentinel:// needs redis-guard's `tls` feature; enable it in Cargo.toml",
        ));
    }
    let insecure = match (tls, fragment) {
        (_, None) => false,
        (true, Some("insecure")) => true,
        (true, Some(_)) => {
            return Err(invalid(
                "the only fragment a rediss+sentinel:// URL takes is #insecure",
            ));
        }
        (false, Some(_)) => {
            return Err(invalid(
                "a fragment (#...) has no meaning in a Redis URL here; remove it",
            ));
        }
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let (path, query) = match after.split_once('?') {
        Some((path, query)) => (path, query),
        None => (after, ""),
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let sentinels = hosts
        .split(',')
        .enumerate()
        .map(|(i, host)| parse_host(host, i + 1))
        .collect::<Result<Vec<_>, _>>()?;
    let mut segments = path.trim_start_matches('/').split('/');
    let master_name = segments.next().unwrap_or_default();
    let master_name = super::url::percent_decode(master_name)
        .ok_or_else(|| invalid("the master name is not valid UTF-8 once percent-decoded"))?;
    if master_name.is_empty() {
        return Err(invalid(format!("no master name; expected {SENTINEL_FORM}")));
    }
    let db = segments.next().filter(|db| !db.is_empty());
    if segments.next().is_some() {
        return Err(invalid(format!(
            "the path holds more than the master name and a database; expected {SENTINEL_FORM}"
        )));
    }
    let mut sentinel_user = None;
    let mut sentinel_password = None;
    let mut allowed_primaries = Vec::new();
    let mut node_query = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "sentinel_username" => sentinel_user = Some(value.into_owned()),
            "sentinel_password" => sentinel_password = Some(value.into_owned()),
            "protocol" => node_query.push(format!("protocol={}", escape(&value))),
            "allowed_primaries" => allowed_primaries.extend(
                value
                    .split(',')
                    .filter(|entry| !entry.trim().is_empty())
                    .map(str::to_owned),
            ),
            key if super::url::CREDENTIAL_KEYS.contains(&key) => {
                return Err(invalid(format!(
                    "{key}= is not read from a sentinel URL: put the Redis nodes' credentials \
                     before the hosts, and the sentinels' in sentinel_username= and \
                     sentinel_password="
                )));
            }
            _ => {
                return Err(invalid(
                    "a query parameter is not one a sentinel URL takes (sentinel_username, \
                     sentinel_password, protocol, allowed_primaries); set pool settings on the builder or with \
                     REDIS_GUARD_* variables",
                ));
            }
        }
    }
    let sentinel_auth = match (sentinel_user, sentinel_password) {
        (None, None) => None,
        (user, Some(password)) => Some((user, password)),
        (Some(_), None) => {
            return Err(invalid(
                "sentinel_username= without sentinel_password=: the sentinels would be asked as \
                 their default user",
            ));
        }
    };
    // The nodes' credentials, database and protocol are checked and read as those of a
    // redis:// URL, with the same messages.
    let stand_in = format!(
        "redis://{}localhost/{}{}{}",
        userinfo.map(|u| format!("{u}@")).unwrap_or_default(),
        db.unwrap_or(""),
        if node_query.is_empty() { "" } else { "?" },
        node_query.join("&")
    );
    let redis = super::url::parse_url(&stand_in)?
        .info
        .redis_settings()
        .clone();
    let sentinel = Sentinel {
        master_name,
        sentinels,
        sentinel_auth,
        redis,
        allowed_primaries,
    };
    sentinel.validate()?;
    Ok(Some(ParsedSentinelUrl {
        sentinel,
        tls: tls.then_some(insecure),
    }))
}

/// One `host[:port]` or `[v6]:port` of the list; `n` counts from 1, for messages.
fn parse_host(raw: &str, n: usize) -> Result<(String, u16), ConfigError> {
    let (host, port) = if let Some(v6) = raw.strip_prefix('[') {
        let (addr, tail) = v6
            .split_once(']')
            .ok_or_else(|| invalid(format!("sentinel {n}: an IPv6 address lacks its ']'")))?;
        let port = match tail {
            "" => None,
            tail => Some(tail.strip_prefix(':').ok_or_else(|| {
                invalid(format!(
                    "sentinel {n}: expected :port after the IPv6 address"
                ))
            })?),
        };
        (addr.to_owned(), port)
    } else {
        let split = match raw.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (raw.to_owned(), None),
        };
        if split.0.contains(':') {
            return Err(invalid(format!(
                "sentinel {n}: an IPv6 address goes in brackets: [::1]:26379"
            )));
        }
        split
    };
    if host.is_empty() {
        return Err(invalid(format!(
            "sentinel {n} has no host; expected {SENTINEL_FORM}"
        )));
    }
    let port = match port {
        None => DEFAULT_SENTINEL_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(invalid(format!(
                    "sentinel {n} has an invalid port (1 to 65535)"
                )));
            }
        },
    };
    Ok((host, port))
}
