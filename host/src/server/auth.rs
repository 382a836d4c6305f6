//! The bearer token: generated into a 0600 file of the data dir, compared in constant time,
//! never printed by `Debug`.

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;

use super::AppState;
use super::error::ApiError;

/// The shortest token a token file may hold (a generated one has 64 characters).
pub const MIN_TOKEN_LEN: usize = 32;

/// A bearer token. Its `Debug` shows no part of it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A fresh random token (256 bits from the OS through two v4 UUIDs, hex).
    pub fn generate() -> Self {
        Token(format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// A token given as text (surrounding whitespace trimmed; empty is refused).
    pub fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| Token(text.to_owned()))
    }

    /// The token of `path` (a token file): refused when others may read or write the file,
    /// or when the token is shorter than 32 characters (one not made here:
    /// guessable).
    pub fn read(path: &Path) -> crate::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let bad = |why: &str| {
            crate::Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned()),
            )
        };
        let meta = std::fs::metadata(path).map_err(|e| crate::Error::io(path, e))?;
        if meta.mode() & 0o077 != 0 {
            return Err(bad(
                "the token file is open to other users (it must be 0600)",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
        match Token::new(&text) {
            Some(token) if token.0.len() >= MIN_TOKEN_LEN => Ok(token),
            Some(_) => Err(bad("the token in the file is too short to be safe")),
            None => Err(bad("the token file is empty")),
        }
    }

    /// Writes the token to `path`, readable by its owner only (0600, replaced atomically).
    pub fn write(&self, path: &Path) -> crate::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| crate::Error::io(&tmp, e))?;
        file.write_all(self.0.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| crate::Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| crate::Error::io(path, e))
    }

    /// The token's text, for a client's `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, given: &str) -> bool {
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

/// Refuses a request without the configured token (401, with `WWW-Authenticate`).
pub(super) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.config.token else {
        return next.run(request).await;
    };
    // The scheme is case-insensitive (RFC 9110).
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(given) if token.matches(given) => next.run(request).await,
        Some(_) => refuse("the bearer token is wrong"),
        None => refuse(
            "this host requires a bearer token (Authorization: Bearer <token>; see the data dir's serve.token)",
        ),
    }
}

/// Refuses a request a browser sent from another origin: without it, any web page the user
/// opens could make their browser run, unload or reconfigure capabilities on this host (a
/// form or `fetch` POST needs no CORS consent to be sent). A request without `Origin` (every
/// non-browser client) and the dashboard's own requests pass. The MCP endpoint is covered
/// too, as its specification requires.
pub(super) async fn same_origin(request: Request, next: Next) -> Response {
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && Some(rest) == host);
        if !same {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "cross-origin requests are refused (this API serves its own dashboard and non-browser clients)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Without a token (a loopback-only service), refuses a request that names a host other than
/// `localhost`, `127.0.0.1` (any loopback address) or `[::1]`: a web page whose own name was
/// re-pointed at 127.0.0.1 (DNS rebinding) is same-origin with itself, so [`same_origin`]
/// alone would let it drive this host. A request without `Host` (not a browser) passes; with
/// a token, any name does (the token guards the service).
pub(super) async fn loopback_host(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.config.token.is_none()
        && let Some(host) = request.headers().get(header::HOST)
        && !is_loopback_host(host.to_str().unwrap_or_default())
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "without a token this host answers requests addressed to localhost, 127.0.0.1 or [::1] only; \
             serve with --require-token to reach it by another name",
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a `Host` header (`name[:port]`, `[v6][:port]`) names a loopback host.
fn is_loopback_host(host: &str) -> bool {
    let port = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let name = match host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`, nothing else after the bracket.
        Some(rest) => match rest.split_once(']') {
            Some((name, "")) => name,
            Some((name, after)) if after.strip_prefix(':').is_some_and(port) => name,
            _ => "",
        },
        None => match host.rsplit_once(':') {
            Some((name, p)) if port(p) => name,
            _ => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn refuse(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Declares the bearer scheme in the OpenAPI document.
pub(super) struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{Token, is_loopback_host};

    #[test]
    fn a_token_file_open_to_others_or_weak_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.token");
        let token = Token::generate();
        token.write(&path).unwrap();
        assert_eq!(Token::read(&path).unwrap().expose(), token.expose());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Token::read(&path).is_err(), "readable by others");
        std::fs::write(&path, "a").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Token::read(&path).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }

    #[test]
    fn loopback_host_names() {
        for ok in [
            "localhost",
            "LOCALHOST:8631",
            "127.0.0.1",
            "127.0.0.1:8631",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8631",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for no in [
            "evil.example",
            "evil.example:8631",
            "localhost.evil.example",
            "10.0.0.1:8631",
            "[::2]:8631",
            "[::1]evil.example",
            "[::1]:80x",
            "::1",
            "",
        ] {
            assert!(!is_loopback_host(no), "{no}");
        }
    }
}
