//! The console's gate, run before every console handler: finds the session behind the cookie,
//! refuses any state-changing request whose form lacks the right CSRF token, and puts strict
//! security headers (CSP and friends) on every answer. Handlers never see a forged POST.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ConsoleError, ConsoleUser, LOGIN_COOKIE, SESSION_COOKIE};
use crate::http::AppState;

/// Console forms are small; anything bigger is not one of ours.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Scripts and styles only from our own `/static`, no inline code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn same(a: &str, b: &str) -> bool {
    !a.is_empty() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The `csrf` field of a URL-encoded form body.
fn csrf_field(body: &[u8]) -> Option<String> {
    form_urlencoded_pairs(body)
        .into_iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v)
}

/// Decodes `application/x-www-form-urlencoded`.
pub fn form_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(eq) => (decode(&p[..eq]), decode(&p[eq + 1..])),
            None => (decode(p), String::new()),
        })
        .collect()
}

pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = match check(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn check(state: &AppState, mut req: Request) -> Result<Request, ConsoleError> {
    // Static files need no session: spare them the lookup.
    if req.uri().path().starts_with("/static/") {
        return Ok(req);
    }
    let secret = cookie(req.headers(), SESSION_COOKIE).map(str::to_owned);
    if let Some(secret) = secret
        && let Some(s) = state.store.session(&secret).await?
    {
        let console = req.extensions().get::<std::sync::Arc<super::Console>>().cloned();
        let capacity = match (req.method(), console) {
            (&Method::GET | &Method::HEAD, Some(console)) => console.capacity_banners(&state.store).await?,
            _ => Default::default(),
        };
        req.extensions_mut().insert(ConsoleUser {
            name: s.user,
            role: s.role,
            csrf: s.csrf,
            secret,
            capacity,
        });
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(req);
    }
    // Every other method changes something: it needs a form with this session's token (or, to
    // sign in, the token of the sign-in cookie).
    let expected = match req.extensions().get::<ConsoleUser>() {
        // Signing in carries the sign-in cookie's token, even where an older session lingers.
        _ if req.uri().path() == "/login" => cookie(req.headers(), LOGIN_COOKIE).unwrap_or_default().to_owned(),
        Some(u) => u.csrf.clone(),
        None => {
            return Err(ConsoleError::forbidden(
                "you are not signed in (or your session ended): sign in again and retry",
            ));
        }
    };
    let (parts, body) = req.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| ConsoleError::new(StatusCode::PAYLOAD_TOO_LARGE, "the form is larger than 64 KiB"))?;
    let given = csrf_field(&bytes).unwrap_or_default();
    if !same(&given, &expected) {
        tracing::warn!(path = %parts.uri.path(), "console form refused: missing or wrong CSRF token");
        return Err(ConsoleError::forbidden(
            "the form's security token is missing or stale: reload the page and submit again",
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode_and_csrf_is_found() {
        let pairs = form_urlencoded_pairs(b"name=a+b&ranges=10.0.0.0%2F30%0D%0A10.1.0.0%2F30&csrf=x%3Dy&flag");
        assert_eq!(pairs[0], ("name".into(), "a b".into()));
        assert_eq!(pairs[1].1, "10.0.0.0/30\r\n10.1.0.0/30");
        assert_eq!(csrf_field(b"a=1&csrf=x%3Dy"), Some("x=y".into()));
        assert_eq!(csrf_field(b"a=1"), None);
        assert_eq!(form_urlencoded_pairs(b"a=%zz%4"), vec![("a".into(), "%zz%4".into())]);
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("elb_login=1; elb_session=abc"));
        assert_eq!(cookie(&h, "elb_session"), Some("abc"));
        assert_eq!(cookie(&h, "session"), None);
        assert!(!same("", ""));
        assert!(same("abc", "abc"));
    }
}
