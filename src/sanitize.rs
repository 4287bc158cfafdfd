//! Text from outside the process, made safe to log and to show.
//!
//! A Redis server or a sentinel is the other end of a socket: what it sends (an error reply,
//! a `+switch-master` payload, a host name) may hold newlines that forge log lines, ANSI
//! escapes that rewrite an operator's terminal, or megabytes. [`server_text`] is the one
//! place such text passes through before it reaches a log line or an error. Health output
//! goes one step further with [`without_addresses`]: what it shows is for operators, and
//! even then it names no host.

/// The longest text from a server kept in a log line or an error, in characters; longer text
/// is cut and ends with `…`.
pub(crate) const MAX_SERVER_TEXT: usize = 256;

/// What stands in for a host, an address or a `host:port` in health output.
pub(crate) const ADDRESS_PLACEHOLDER: &str = "<address>";

/// `text` on one line and bounded, credentials hidden ([`without_credentials`]): ANSI escape
/// sequences dropped, every other control
/// character (newlines, tabs, C1 controls) and every bidirectional override turned into a
/// space, runs of spaces collapsed, at most [`MAX_SERVER_TEXT`] characters.
pub(crate) fn server_text(text: impl std::fmt::Display) -> String {
    let text = without_credentials(&text.to_string());
    let mut out = String::with_capacity(text.len().min(MAX_SERVER_TEXT + 4));
    let mut kept = 0;
    let mut chars = text.chars().peekable();
    let mut pending_space = false;
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            skip_escape(&mut chars);
            pending_space = true;
            continue;
        }
        if c.is_control() || c.is_whitespace() || is_bidi_control(c) {
            pending_space = true;
            continue;
        }
        if pending_space && kept > 0 {
            if kept == MAX_SERVER_TEXT {
                out.push('…');
                return out;
            }
            out.push(' ');
            kept += 1;
        }
        pending_space = false;
        if kept == MAX_SERVER_TEXT {
            out.push('…');
            return out;
        }
        out.push(c);
        kept += 1;
    }
    out
}

/// `text` with the user information before every `@` replaced by `***`: a URL's
/// `user:password@` (`https://u:p@host` -> `https://***@host`), or a name that comes with one.
/// Text from a server or a health check may quote a URL it was given.
fn without_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let before = &rest[..at];
        let start = before
            .char_indices()
            .rev()
            .find(|&(_, c)| {
                c.is_whitespace() || matches!(c, '/' | '(' | '<' | '[' | '"' | '\'' | ',')
            })
            .map_or(0, |(i, c)| i + c.len_utf8());
        out.push_str(&before[..start]);
        if start < at {
            out.push_str("***");
        }
        out.push('@');
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out
}

/// Skips the rest of an escape sequence whose `ESC` was just read: a CSI (`ESC [` parameters,
/// a final byte in `@`..`~`), an OSC (`ESC ]` up to `BEL` or `ESC \`), or one character.
fn skip_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    match chars.next() {
        Some('[') => {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
        Some(']') => {
            while let Some(c) = chars.next() {
                if c == '\u{7}' {
                    break;
                }
                if c == '\u{1b}' {
                    chars.next_if_eq(&'\\');
                    break;
                }
            }
        }
        _ => {}
    }
}

/// The Unicode controls that reorder how a line reads (Trojan Source).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// [`server_text`], with every IP address, `host:port` and dotted host name replaced by
/// [`ADDRESS_PLACEHOLDER`]: for health details, which may be read by someone who must not
/// learn the layout of the network behind the service.
pub(crate) fn without_addresses(text: &str) -> String {
    let line = server_text(text);
    let mut out = String::with_capacity(line.len());
    let mut token = String::new();
    for c in line.chars() {
        if is_token_char(c) {
            token.push(c);
        } else {
            push_token(&mut out, &token);
            token.clear();
            out.push(c);
        }
    }
    push_token(&mut out, &token);
    out
}

/// Characters an address can be written with: host names, IPv4, IPv6 (in brackets or not),
/// ports, zone ids.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_' | '[' | ']' | '%')
}

/// Pushes `token`, or the placeholder if it is an address; punctuation at its end (a
/// sentence's full stop, a label's colon) is kept.
fn push_token(out: &mut String, token: &str) {
    let core = token.trim_end_matches(['.', ':']);
    let tail = &token[core.len()..];
    if is_address(core) {
        out.push_str(ADDRESS_PLACEHOLDER);
    } else {
        out.push_str(core);
    }
    out.push_str(tail);
}

fn is_address(token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    if token.parse::<std::net::IpAddr>().is_ok() || token.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    // `[v6]`, `[v6]:port`, and a v6 address with a zone (`fe80::1%eth0`).
    if token.starts_with('[') || token.matches(':').count() >= 2 {
        return true;
    }
    let host = match token.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            return !host.is_empty();
        }
        Some(_) => return false,
        None => token,
    };
    // A dotted name whose last label is a word: `redis-0.cache.svc`, `db.internal`; not a
    // version (`7.2.4`) or a number.
    let mut labels = host.split('.');
    let last = labels.next_back().unwrap_or("");
    host.contains('.')
        && host.split('.').all(|l| !l.is_empty())
        && last.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_is_one_bounded_line_without_escapes() {
        let forged = "ERR bad\r\n2026-01-01T00:00:00Z  INFO admin logged in\u{1b}[31mred\u{1b}[0m\u{1b}]0;title\u{7}\u{202e}x\t\u{85}y";
        assert_eq!(
            server_text(forged),
            "ERR bad 2026-01-01T00:00:00Z INFO admin logged in red x y"
        );
        let long = "x".repeat(10_000);
        let cut = server_text(&long);
        assert_eq!(cut.chars().count(), MAX_SERVER_TEXT + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(server_text("  \n "), "");
    }

    #[test]
    fn credentials_before_an_at_sign_are_hidden() {
        let cases = [
            ("redis://:s3cret@cache:6379/0", "redis://***@cache:6379/0"),
            ("(https://u:p@h) and u2:p2@h2", "(https://***@h) and ***@h2"),
            ("no at sign here", "no at sign here"),
            ("a lone @ stays", "a lone @ stays"),
        ];
        for (raw, shown) in cases {
            assert_eq!(server_text(raw), shown, "{raw}");
        }
    }

    #[test]
    fn addresses_are_replaced_and_words_kept() {
        let cases = [
            (
                "sentinel 10.0.0.1:26379 refused: Connection refused (os error 111)",
                "sentinel <address> refused: Connection refused (os error 111)",
            ),
            (
                "connect to [fd00::1]:6379 and fd00::2 failed",
                "connect to <address> and <address> failed",
            ),
            (
                "redis-0.redis.svc.cluster.local:6379 unreachable; cache.internal too.",
                "<address> unreachable; <address> too.",
            ),
            (
                "unreachable: circuit breaker open; last connect error: timed out after 2s",
                "unreachable: circuit breaker open; last connect error: timed out after 2s",
            ),
            ("redis 7.2.4 at 192.168.1.20.", "redis 7.2.4 at <address>."),
            (
                "connect failed; url https://user:hunter2@billing.internal/x",
                "connect failed; url https://***@<address>/x",
            ),
            ("localhost:6379", "<address>"),
        ];
        for (raw, shown) in cases {
            assert_eq!(without_addresses(raw), shown, "{raw}");
        }
    }
}
