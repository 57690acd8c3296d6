//! Which web pages may use the signaling server: the `Origin` check of
//! RFC 6455 §10.2 (browsers send `Origin` on every WebSocket handshake and
//! cross-origin request, RFC 6454 §7; other clients usually send none).
//!
//! Accepted: requests without `Origin` (non-browser clients: `natkit punch`,
//! `natkit call`, scripts), the page's own origin (the `Origin` names the same
//! host and port as the request's `Host`, so the page the server serves works
//! on any address it is reached by), and each `--allow-origin`; `*` accepts
//! every origin. Everything else, `Origin: null` included, is refused:
//! otherwise any web site could make its visitors' browsers use this server
//! and the TURN credentials it hands out.

use std::fmt;

use crate::error::UsageError;

/// `scheme://host:port`, lower case, the port always written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `host[:port]` → (lower-case host, port); `[v6]:port` kept bracketed.
fn split_authority(authority: &str, default: u16) -> Option<(String, u16)> {
    let authority = authority.trim();
    if authority.is_empty() || authority.contains(['/', '@', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        (format!("[{v6}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (authority.to_string(), default),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

impl Origin {
    /// Parses a serialised origin (`https://app.example`, `http://10.0.0.1:8080`).
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let (host, port) = split_authority(rest.strip_suffix('/').unwrap_or(rest), default_port(&scheme)?)?;
        Some(Origin { scheme, host, port })
    }

    /// True when this origin is the server at `host_header` (the request's `Host`).
    fn is_host(&self, host_header: &str, tls: bool) -> bool {
        let served = if tls { 443 } else { 80 };
        // The scheme must match the server's too: an http page is not the https one.
        let scheme_ok = matches!((self.scheme.as_str(), tls), ("http" | "ws", false) | ("https" | "wss", true));
        scheme_ok && split_authority(host_header, served).is_some_and(|(h, p)| h == self.host && p == self.port)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The configured policy (`--allow-origin`).
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    any: bool,
    allowed: Vec<Origin>,
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginVerdict {
    Allow,
    /// Refuse with 403; the text says why (for the response body and the log).
    Refuse(String),
}

impl OriginPolicy {
    /// From the `--allow-origin` values; `*` allows every origin.
    pub fn new(allow: &[String]) -> Result<Self, UsageError> {
        let mut policy = OriginPolicy::default();
        for a in allow {
            if a.trim() == "*" {
                policy.any = true;
            } else {
                let o = Origin::parse(a).ok_or_else(|| {
                    UsageError::new(format!(
                        "--allow-origin '{a}' is not an origin; write SCHEME://HOST[:PORT] as the browser's address \
                         bar shows it, e.g. https://app.example.org, or * for every site"
                    ))
                })?;
                policy.allowed.push(o);
            }
        }
        Ok(policy)
    }

    /// Checks a request's `Origin` (None: absent) against its `Host`.
    pub fn check(&self, origin: Option<&str>, host: Option<&str>, tls: bool) -> OriginVerdict {
        let Some(text) = origin else { return OriginVerdict::Allow };
        if self.any {
            return OriginVerdict::Allow;
        }
        let Some(o) = Origin::parse(text) else {
            return OriginVerdict::Refuse(format!(
                "Origin '{}' is not allowed (an opaque or malformed origin)",
                text.chars().take(100).collect::<String>()
            ));
        };
        if host.is_some_and(|h| o.is_host(h, tls)) || self.allowed.contains(&o) {
            OriginVerdict::Allow
        } else {
            OriginVerdict::Refuse(format!(
                "pages from {o} may not use this server; its operator can allow them with --allow-origin"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &OriginPolicy, origin: &str, host: &str, tls: bool) -> bool {
        matches!(p.check(Some(origin), Some(host), tls), OriginVerdict::Refuse(_))
    }

    #[test]
    fn no_origin_and_the_pages_own_origin_pass_by_default_and_others_do_not() {
        let p = OriginPolicy::new(&[]).unwrap();
        assert_eq!(p.check(None, Some("x"), false), OriginVerdict::Allow);
        assert!(!refused(&p, "http://127.0.0.1:8080", "127.0.0.1:8080", false));
        assert!(!refused(&p, "https://Signal.Example", "signal.example", true));
        assert!(!refused(&p, "https://signal.example", "signal.example:443", true));
        assert!(!refused(&p, "http://[::1]:8080", "[::1]:8080", false));
        assert!(refused(&p, "http://127.0.0.1:8081", "127.0.0.1:8080", false));
        assert!(refused(&p, "http://signal.example", "signal.example", true), "http page, https server");
        assert!(refused(&p, "https://evil.example", "signal.example", true));
        assert!(refused(&p, "null", "signal.example", true));
        assert!(refused(&p, "", "signal.example", true));
        assert!(matches!(p.check(Some("https://a.example"), None, true), OriginVerdict::Refuse(_)));
    }

    #[test]
    fn allowed_origins_match_by_scheme_host_and_port_and_star_allows_all() {
        let p = OriginPolicy::new(&["https://app.example".into(), "http://10.0.0.1:3000".into()]).unwrap();
        assert!(!refused(&p, "https://APP.example:443", "signal.example", true));
        assert!(!refused(&p, "http://10.0.0.1:3000", "signal.example", true));
        assert!(refused(&p, "http://app.example", "signal.example", true));
        assert!(refused(&p, "https://app.example:8443", "signal.example", true));
        assert!(refused(&p, "https://app.example.evil", "signal.example", true));
        let all = OriginPolicy::new(&["*".into()]).unwrap();
        assert!(!refused(&all, "https://evil.example", "signal.example", true));
        assert!(!refused(&all, "null", "signal.example", true));
    }

    #[test]
    fn malformed_allow_origin_is_a_usage_error() {
        for bad in ["app.example", "https://", "ftp://x", "https://a.example/path", "https://u@a.example"] {
            assert!(OriginPolicy::new(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
