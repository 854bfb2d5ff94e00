//! The one error shape at the edge: every failure becomes `application/problem+json` with a
//! status that tells the client what to do and a `detail` that says what to fix. Server-side
//! failures say little to the client and log everything.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgelb_api::{FieldError, Problem};

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// The problem `type`: `about:blank`, or one a client may act on
    /// ([`edgelb_api::PROBLEM_POOL_EXHAUSTED`]).
    pub kind: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind: "about:blank",
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, detail)
    }
}

/// An error answer stays small whatever the request held (a 1 MiB body must not come back as
/// megabytes): at most this many fields are listed, in `errors` and in the detail...
pub const MAX_FIELD_ERRORS: usize = 20;
/// ...a word longer than this (a value the client sent, quoted back) is cut in the middle...
const MAX_WORD: usize = 80;
/// ...and the detail, each field's path and each message are cut to this many bytes.
const MAX_TEXT: usize = 2048;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Invalid(errors) => ApiError {
                status: StatusCode::BAD_REQUEST,
                kind: "about:blank",
                detail: format!(
                    "the request has {} field(s) to fix: {}{}",
                    errors.len(),
                    errors
                        .iter()
                        .take(MAX_FIELD_ERRORS)
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                    match errors.len().saturating_sub(MAX_FIELD_ERRORS) {
                        0 => String::new(),
                        n => format!("; and {n} more"),
                    }
                ),
                errors,
            },
            StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            StoreError::Conflict(m) if m.starts_with(edgelb_api::POOL_EXHAUSTED_DETAIL) => ApiError {
                kind: edgelb_api::PROBLEM_POOL_EXHAUSTED,
                ..ApiError::new(StatusCode::CONFLICT, m)
            },
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            StoreError::Unprocessable(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            other => {
                tracing::error!(error = ?other, "request failed inside the store");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error: see the appliance's log",
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let status = r.status();
        let detail = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                "the body must be JSON: send the header 'Content-Type: application/json'".to_owned()
            }
            JsonRejection::JsonSyntaxError(_) => format!("the body is not valid JSON: {}", r.body_text()),
            JsonRejection::JsonDataError(_) => format!("the JSON does not fit this endpoint: {}", r.body_text()),
            JsonRejection::BytesRejection(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the body is larger than the limit of {} bytes", super::MAX_BODY_BYTES)
            }
            _ => r.body_text(),
        };
        // A body that parses but has the wrong fields is as invalid as bad JSON: tell the
        // client to fix its request (400), like every other validation failure here.
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        ApiError::new(status, detail)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("the query string is not valid: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request(format!("the path is not valid: {}", r.body_text()))
    }
}

/// `text` with every over-long word cut in the middle and the whole cut to [`MAX_TEXT`] bytes, each
/// cut marked with how much it left out.
pub fn bounded(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT + 64));
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if word.len() <= MAX_WORD {
            out.push_str(word);
        } else {
            let head = floor_char(word, MAX_WORD / 2);
            let tail = &word[ceil_char(word, word.len() - MAX_WORD / 4)..];
            out.push_str(&format!("{head}…({} bytes)…{tail}", word.len()));
        }
        if out.len() > MAX_TEXT {
            out.truncate(floor_char(&out, MAX_TEXT).len());
            out.push_str(&format!("… (cut: {} bytes in all)", text.len()));
            break;
        }
    }
    out
}

/// The longest prefix of `s` of at most `n` bytes that ends on a character boundary.
fn floor_char(s: &str, n: usize) -> &str {
    let mut n = n.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// The first character boundary of `s` at or after byte `n`.
fn ceil_char(s: &str, mut n: usize) -> usize {
    while !s.is_char_boundary(n) {
        n += 1;
    }
    n
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: self.kind.to_owned(),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: bounded(&self.detail),
            errors: self
                .errors
                .iter()
                .take(MAX_FIELD_ERRORS)
                .map(|e| FieldError {
                    field: bounded(&e.field),
                    message: bounded(&e.message),
                })
                .collect(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"edgelb\""),
            );
        }
        resp
    }
}

/// Middleware: an API error that left some layer without a body (a timeout, a limit) still
/// reaches the client as a problem document.
pub async fn problem_for_bare_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let resp = next.run(req).await;
    let status = resp.status();
    if !api
        || !(status.is_client_error() || status.is_server_error())
        || resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return resp;
    }
    let detail = match status {
        StatusCode::REQUEST_TIMEOUT => "the request took too long and was abandoned: try again".to_owned(),
        s => format!("the request failed: {}", s.canonical_reason().unwrap_or("error")),
    };
    let mut problem = ApiError::new(status, detail).into_response();
    // Keep headers such as Allow or Retry-After that the layer set.
    for (name, value) in resp.headers() {
        problem
            .headers_mut()
            .entry(name.clone())
            .or_insert_with(|| value.clone());
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_text_keeps_short_words_and_cuts_long_ones_and_the_whole() {
        assert_eq!(bounded("name: 'web' is taken"), "name: 'web' is taken");
        let long = format!("unknown field `{}`, expected `name`", "é".repeat(1000));
        let b = bounded(&long);
        assert!(b.starts_with("unknown field `éé"), "{b}");
        assert!(b.contains("…(2003 bytes)…"), "{b}");
        assert!(b.ends_with("éé`, expected `name`"), "{b}");
        let many = "word ".repeat(10_000);
        let b = bounded(&many);
        assert!(b.len() <= MAX_TEXT + 64, "{}", b.len());
        assert!(b.ends_with("… (cut: 50000 bytes in all)"), "{b}");
    }
}
