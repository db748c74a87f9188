//! What a browser could be made to do against the server: cross-site writes (a page on
//! another site posting a form to a keyless server on loopback), DNS rebinding (another
//! site's name resolving to 127.0.0.1, so its pages read the API as "same origin"), and
//! framing or MIME sniffing of the page.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::state::AppState;

/// Routes any caller may reach without a key: liveness and the page's own files.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/health" | "/favicon.ico") || path.starts_with("/assets/")
}

/// Refuses requests a browser sent on behalf of another site, and, on a keyless server
/// that is not `--allow-public`, requests addressed to a name other than loopback.
pub async fn check_origin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let config = &state.config;
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    // Without a key, the network is the only guard: a foreign Host means a page on
    // another site reached this server through DNS rebinding.
    if config.api_key.is_none()
        && !config.allow_public
        && let Some(host) = host
        && !is_loopback_authority(host)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this keyless server answers requests addressed to loopback only, not `{}`; \
                 set --api-key or --allow-public to serve other names",
                printable(host)
            ),
        ));
    }
    if let Some(origin) = foreign_origin(headers, host, &config.cors_origins) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "requests from the origin `{}` are not allowed: add it with --cors-origin",
                printable(&origin)
            ),
        ));
    }
    Ok(next.run(request).await)
}

/// The request's origin when it is neither this server's own, nor loopback, nor allowed by
/// `--cors-origin`. A request without `Origin` counts as foreign only when the browser says
/// it is cross-site (`Sec-Fetch-Site`), since non-browser clients send neither.
fn foreign_origin(headers: &HeaderMap, host: Option<&str>, allowed: &[String]) -> Option<String> {
    if allowed.iter().any(|o| o == "*") {
        return None;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        return cross_site.then(|| "(a cross-site request without Origin)".to_string());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    if allowed.iter().any(|o| o.eq_ignore_ascii_case(&origin)) {
        return None;
    }
    // `null` (sandboxed frames, file: pages) and anything not http(s) are foreign.
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match authority {
        Some(a) if host.is_some_and(|h| h.eq_ignore_ascii_case(a)) => None,
        Some(a) if is_loopback_authority(a) => None,
        _ => Some(origin),
    }
}

/// `localhost`, `*.localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inside, port)) if port.is_empty() || port.starts_with(':') => inside,
            _ => return false,
        },
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// At most 100 characters, control characters escaped: these values are the client's.
fn printable(value: &str) -> String {
    value
        .chars()
        .take(100)
        .flat_map(char::escape_debug)
        .collect()
}

/// Headers that keep the page from being framed, sniffed or made to load foreign code.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_authorities() {
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1",
            "127.0.0.1:9",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
            "app.localhost:3000",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:80",
            "[::2]:80",
            "[::1",
            "",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origins_are_own_loopback_or_listed() {
        let none: Vec<String> = Vec::new();
        let own = headers(&[("origin", "http://lore.internal:8080")]);
        assert_eq!(
            foreign_origin(&own, Some("lore.internal:8080"), &none),
            None
        );
        let local = headers(&[("origin", "http://localhost:3000")]);
        assert_eq!(foreign_origin(&local, Some("127.0.0.1:8080"), &none), None);
        let evil = headers(&[("origin", "https://evil.example")]);
        assert!(foreign_origin(&evil, Some("127.0.0.1:8080"), &none).is_some());
        let listed = vec!["https://evil.example".to_string()];
        assert_eq!(foreign_origin(&evil, Some("127.0.0.1:8080"), &listed), None);
        assert!(foreign_origin(&headers(&[("origin", "null")]), None, &none).is_some());
        let no_origin_cross = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(foreign_origin(&no_origin_cross, None, &none).is_some());
        assert_eq!(foreign_origin(&HeaderMap::new(), None, &none), None);
        assert_eq!(foreign_origin(&evil, None, &["*".to_string()]), None);
    }
}
