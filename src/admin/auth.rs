//! Who may use the console and the admin API, and from where.
//!
//! - `[admin] token_file`: one `name:token` a line. The CLI sends `Authorization: Bearer TOKEN`;
//!   the browser trades the token for a session cookie (HttpOnly, SameSite=Strict) at
//!   `POST /api/login`. The name is what the audit log records as `who`.
//! - Without a token file, callers are "anonymous" and only a loopback `Host` is answered (a
//!   page on another site that rebinds its DNS name to 127.0.0.1 is refused by its Host).
//! - No state change from another origin: every POST is refused when `Sec-Fetch-Site` says
//!   another site or `Origin` is not this host; and a POST must carry the session's CSRF token
//!   (`X-CSRF-Token`, from `GET /api/session`) unless it is authenticated by a bearer token,
//!   which a browser never adds to a cross-origin request by itself. The API answers no CORS
//!   preflight, so a foreign page cannot send either header.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The browser session cookie.
pub const COOKIE: &str = "stormbreaker_session";
/// The header a cookie or anonymous POST must carry, equal to its session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Logins last this long; the console then asks for the token again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Shortest token accepted: guessing 16 random characters over HTTP is hopeless.
pub const MIN_TOKEN_LEN: usize = 16;
/// The name of a line that holds only a token.
pub const DEFAULT_NAME: &str = "admin";

/// The tokens of `[admin] token_file`: SHA-256 digests, compared in constant time.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(String, [u8; 32])>,
    /// The tokens themselves, in file order, for the CLI on the same host.
    plain: Vec<(String, String)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Tokens {
    /// Reads and checks a token file; errors name the file and line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.mode() & 0o004 != 0 {
            return Err(format!(
                "{} is readable by every user (mode {:o}): the tokens release mail; chmod 600 it",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|(line, msg)| format!("{}:{line}: {msg}", path.display()))
    }

    /// Parses `name:token` lines; `#` starts a comment line. Errors give the 1-based line.
    pub fn parse(text: &str) -> Result<Tokens, (usize, String)> {
        let mut tokens = Tokens::default();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = match line.split_once(':') {
                Some((name, token)) => (name.trim(), token.trim()),
                None => (DEFAULT_NAME, line),
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
            {
                return Err((
                    n,
                    format!("{name:?} is not a name (letters, digits, '.', '_', '@', '-')"),
                ));
            }
            if token.chars().count() < MIN_TOKEN_LEN
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err((
                    n,
                    format!(
                        "the token of {name:?} must be at least {MIN_TOKEN_LEN} characters without \
                         spaces (e.g. `openssl rand -hex 24`)"
                    ),
                ));
            }
            if tokens.entries.iter().any(|(other, _)| other == name) {
                return Err((n, format!("{name:?} is named twice")));
            }
            let hash = digest(token);
            if tokens.entries.iter().any(|(_, h)| *h == hash) {
                return Err((n, "this token is given twice".into()));
            }
            tokens.entries.push((name.to_string(), hash));
            tokens.plain.push((name.to_string(), token.to_string()));
        }
        if tokens.entries.is_empty() {
            return Err((1, "no token in the file".into()));
        }
        Ok(tokens)
    }

    /// The name whose token this is. Every entry is compared, so the time taken does not tell
    /// which entry (or how much of one) matched.
    pub fn check(&self, candidate: &str) -> Option<&str> {
        let hash = digest(candidate);
        let mut found = None;
        for (name, h) in &self.entries {
            if bool::from(h.ct_eq(&hash)) {
                found = Some(name.as_str());
            }
        }
        found
    }

    pub fn has(&self, name: &str) -> bool {
        self.entries.iter().any(|(n, _)| n == name)
    }

    /// The token the CLI presents: the entry named `preferred` (the user running it), else the
    /// first.
    pub fn for_cli(&self, preferred: Option<&str>) -> (&str, &str) {
        let pick = preferred
            .and_then(|p| self.plain.iter().find(|(n, _)| n == p))
            .unwrap_or(&self.plain[0]);
        (&pick.0, &pick.1)
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `Authorization: Bearer` (the CLI, scripts).
    Bearer,
    /// The console's session cookie, with its CSRF token.
    Session { csrf: String },
    /// No token file: a loopback client.
    Anonymous,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// For the audit log's `who`.
    pub name: String,
    pub via: Via,
    pub peer: SocketAddr,
}

struct Session {
    name: String,
    csrf: String,
    expires: Instant,
}

/// Tokens (reloadable) and the browser sessions opened with them.
pub struct Auth {
    tokens: arc_swap::ArcSwapOption<Tokens>,
    sessions: Mutex<HashMap<String, Session>>,
    /// The CSRF token of anonymous callers (no token file), per process.
    anonymous_csrf: String,
}

/// Why a request is refused: the status and a sentence for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// 32 random bytes, base64url.
fn random_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

impl Auth {
    pub fn new(tokens: Option<Tokens>) -> Auth {
        Auth {
            tokens: arc_swap::ArcSwapOption::from_pointee(tokens),
            sessions: Mutex::new(HashMap::new()),
            anonymous_csrf: random_secret(),
        }
    }

    /// Whether a token file is in force.
    pub fn required(&self) -> bool {
        self.tokens.load().is_some()
    }

    /// New tokens (SIGHUP); sessions of names no longer present end.
    pub fn reload(&self, tokens: Tokens) {
        self.sessions().retain(|_, s| tokens.has(&s.name));
        self.tokens.store(Some(std::sync::Arc::new(tokens)));
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who is calling, from the bearer token or the session cookie; anonymous loopback callers
    /// when there is no token file.
    pub fn authenticate(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, Refusal> {
        let tokens = self.tokens.load();
        let Some(tokens) = tokens.as_ref() else {
            if !loopback_host(headers) {
                return Err(refuse(
                    403,
                    "without [admin] token_file only http://127.0.0.1, [::1] or localhost is \
                     answered",
                ));
            }
            return Ok(Caller {
                name: "anonymous".into(),
                via: Via::Anonymous,
                peer,
            });
        };
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            return match token.and_then(|t| tokens.check(t)) {
                Some(name) => Ok(Caller {
                    name: name.to_string(),
                    via: Via::Bearer,
                    peer,
                }),
                None => {
                    tracing::warn!(client = %peer, "admin API: wrong bearer token");
                    Err(refuse(401, "wrong token"))
                }
            };
        }
        let Some(id) = cookie(headers, COOKIE) else {
            return Err(refuse(401, "log in first"));
        };
        let mut sessions = self.sessions();
        let now = Instant::now();
        match sessions.get(id) {
            Some(s) if s.expires > now => Ok(Caller {
                name: s.name.clone(),
                via: Via::Session {
                    csrf: s.csrf.clone(),
                },
                peer,
            }),
            Some(_) => {
                sessions.remove(id);
                Err(refuse(401, "the session expired; log in again"))
            }
            None => Err(refuse(401, "log in first")),
        }
    }

    /// The CSRF token a caller must echo on POST (None for bearer callers, who need none).
    pub fn csrf_of(&self, caller: &Caller) -> Option<String> {
        match &caller.via {
            Via::Bearer => None,
            Via::Session { csrf } => Some(csrf.clone()),
            Via::Anonymous => Some(self.anonymous_csrf.clone()),
        }
    }

    /// A state change must come from this origin and, unless bearer-authenticated, carry the
    /// caller's CSRF token.
    pub fn check_state_change(&self, caller: &Caller, headers: &HeaderMap) -> Result<(), Refusal> {
        same_origin(headers)?;
        let Some(expected) = self.csrf_of(caller) else {
            return Ok(());
        };
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if bool::from(sent.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(refuse(
                403,
                "missing or wrong X-CSRF-Token (GET /api/session gives it)",
            ))
        }
    }

    /// Trades a token for a session: the cookie to set and the caller it makes.
    pub fn login(
        &self,
        token: &str,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<(HeaderValue, Caller), Refusal> {
        same_origin(headers)?;
        let tokens = self.tokens.load();
        let Some(tokens) = tokens.as_ref() else {
            return Err(refuse(
                400,
                "no [admin] token_file: nothing to log in to, the console is open to loopback",
            ));
        };
        let Some(name) = tokens.check(token.trim()) else {
            tracing::warn!(client = %peer, "console: login with a wrong token");
            return Err(refuse(401, "wrong token"));
        };
        let id = random_secret();
        let csrf = random_secret();
        let now = Instant::now();
        let mut sessions = self.sessions();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            id.clone(),
            Session {
                name: name.to_string(),
                csrf: csrf.clone(),
                expires: now + SESSION_LIFETIME,
            },
        );
        let cookie = format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            SESSION_LIFETIME.as_secs()
        );
        tracing::info!(who = name, client = %peer, "console: logged in");
        let caller = Caller {
            name: name.to_string(),
            via: Via::Session { csrf },
            peer,
        };
        Ok((
            HeaderValue::from_str(&cookie).expect("ASCII cookie"),
            caller,
        ))
    }

    /// Ends the session of the cookie; returns the cookie that clears it.
    pub fn logout(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(id) = cookie(headers, COOKIE) {
            self.sessions().remove(id);
        }
        HeaderValue::from_static(
            "stormbreaker_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        )
    }
}

/// Refuses requests a browser marks as coming from another site, or whose Origin is not the
/// host they were sent to.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err(refuse(
            403,
            format!("cross-origin request refused (Sec-Fetch-Site: {site})"),
        ));
    }
    if let Some(origin) = text("origin") {
        let host = text("host").unwrap_or("");
        let matches = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host));
        if !matches {
            return Err(refuse(
                403,
                format!("cross-origin request refused (Origin: {origin})"),
            ));
        }
    }
    Ok(())
}

/// The Host header names this machine's loopback: 127.x.x.x, [::1] or localhost.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 without Host: not a browser.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const PEER: &str = "127.0.0.1:40000";

    #[test]
    fn token_files_are_parsed_and_checked() {
        let t =
            Tokens::parse("# admins\nalice:0123456789abcdef0123\n\nbob: fedcba9876543210fedc \n")
                .unwrap();
        assert_eq!(t.check("0123456789abcdef0123"), Some("alice"));
        assert_eq!(t.check("fedcba9876543210fedc"), Some("bob"));
        assert_eq!(t.check("0123456789abcdef012"), None);
        assert_eq!(t.check(""), None);
        assert_eq!(t.for_cli(Some("bob")).0, "bob");
        assert_eq!(t.for_cli(Some("carol")).0, "alice");
        let bare = Tokens::parse("0123456789abcdef0123\n").unwrap();
        assert_eq!(bare.check("0123456789abcdef0123"), Some(DEFAULT_NAME));
        for (text, line) in [
            ("alice:short\n", 1),
            ("# c\nal ice:0123456789abcdef0123\n", 2),
            ("a:0123456789abcdef0123\na:0123456789abcdef0124\n", 2),
            ("a:0123456789abcdef0123\nb:0123456789abcdef0123\n", 2),
            ("# nothing\n", 1),
        ] {
            assert_eq!(Tokens::parse(text).unwrap_err().0, line, "{text}");
        }
    }

    #[test]
    fn bearer_cookie_and_anonymous_callers() {
        let auth = Auth::new(Some(Tokens::parse("alice:0123456789abcdef0123\n").unwrap()));
        let peer: SocketAddr = PEER.parse().unwrap();
        let ok = auth
            .authenticate(
                &headers(&[("authorization", "Bearer 0123456789abcdef0123")]),
                peer,
            )
            .unwrap();
        assert_eq!((ok.name.as_str(), &ok.via), ("alice", &Via::Bearer));
        let e = auth
            .authenticate(&headers(&[("authorization", "Bearer nope")]), peer)
            .unwrap_err();
        assert_eq!(e.status, 401);
        assert_eq!(
            auth.authenticate(&headers(&[]), peer).unwrap_err().status,
            401
        );

        // Login gives a cookie; the cookie authenticates; state changes need its CSRF token.
        let (cookie, _) = auth
            .login("0123456789abcdef0123", &headers(&[]), peer)
            .unwrap();
        let cookie = cookie.to_str().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let id = cookie.split(';').next().unwrap();
        let caller = auth
            .authenticate(&headers(&[("cookie", &format!("x=1; {id}"))]), peer)
            .unwrap();
        let csrf = auth.csrf_of(&caller).unwrap();
        let post = |extra: &[(&'static str, &str)]| {
            auth.check_state_change(&caller, &headers(extra))
                .map_err(|r| r.status)
        };
        assert_eq!(post(&[]), Err(403));
        assert_eq!(post(&[("x-csrf-token", "wrong")]), Err(403));
        assert_eq!(post(&[("x-csrf-token", &csrf)]), Ok(()));
        assert_eq!(
            post(&[
                ("x-csrf-token", &csrf),
                ("host", "127.0.0.1:9925"),
                ("origin", "http://evil.example")
            ]),
            Err(403)
        );
        assert_eq!(
            post(&[("x-csrf-token", &csrf), ("sec-fetch-site", "cross-site")]),
            Err(403)
        );
        assert_eq!(
            post(&[
                ("x-csrf-token", &csrf),
                ("host", "127.0.0.1:9925"),
                ("origin", "http://127.0.0.1:9925"),
                ("sec-fetch-site", "same-origin")
            ]),
            Ok(())
        );
        // Bearer callers need no CSRF token, but still no foreign Origin.
        assert!(auth.check_state_change(&ok, &headers(&[])).is_ok());
        assert!(
            auth.check_state_change(
                &ok,
                &headers(&[("host", "h:1"), ("origin", "http://other:1")])
            )
            .is_err()
        );
        // A reload without alice ends her session.
        auth.reload(Tokens::parse("bob:fedcba9876543210fedc\n").unwrap());
        assert!(
            auth.authenticate(&headers(&[("cookie", id)]), peer)
                .is_err()
        );

        let open = Auth::new(None);
        assert!(
            open.authenticate(&headers(&[("host", "127.0.0.1:9925")]), peer)
                .is_ok()
        );
        assert!(
            open.authenticate(&headers(&[("host", "[::1]:9925")]), peer)
                .is_ok()
        );
        assert!(
            open.authenticate(&headers(&[("host", "localhost")]), peer)
                .is_ok()
        );
        let rebound = open
            .authenticate(&headers(&[("host", "evil.example:9925")]), peer)
            .unwrap_err();
        assert_eq!(rebound.status, 403);
    }
}
