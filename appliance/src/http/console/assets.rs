//! The console's static files (CSS, JavaScript, icon) from `web/static`, compiled into the
//! binary in release builds. Served with their MIME type and a short cache lifetime.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "../web/static/"]
struct Assets;

pub async fn serve(Path(file): Path<String>) -> Response {
    let Some(asset) = Assets::get(&file) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let mime = asset.metadata.mimetype().to_owned();
    let mut resp = asset.data.into_owned().into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    resp
}
