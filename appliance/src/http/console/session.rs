//! Signing in and out. The session secret goes only into an HttpOnly, Secure, SameSite=Strict
//! cookie that expires with the session; repeated failures for one user from one address must
//! wait longer and longer before the password is even checked.

use std::sync::Arc;

use axum::Extension;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use rand::RngCore;

use super::guard::cookie;
use super::view::LoginPage;
use super::{ClientIp, Console, ConsoleUser, LOGIN_COOKIE, PageResult, SESSION_COOKIE};
use crate::http::AppState;
use crate::store::sessions::SESSION_SECONDS;

fn set_cookie(resp: &mut Response, name: &str, value: &str, max_age: i64) {
    let c = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn login_form(status: StatusCode, headers: &HeaderMap, user: &str, error: Option<String>) -> Response {
    // Reuse the sign-in cookie's token if there is one, so two open tabs both work.
    let token = match cookie(headers, LOGIN_COOKIE) {
        Some(t) if t.len() >= 32 => t.to_owned(),
        _ => {
            let mut b = [0u8; 32];
            rand::rng().fill_bytes(&mut b);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        }
    };
    let page = LoginPage {
        csrf: token.clone(),
        user: user.to_owned(),
        error,
    };
    let mut resp = (status, page).into_response();
    set_cookie(&mut resp, LOGIN_COOKIE, &token, 3600);
    resp
}

pub async fn login_page(user: Option<ConsoleUser>, headers: HeaderMap) -> Response {
    if user.is_some() {
        return Redirect::to("/").into_response();
    }
    login_form(StatusCode::OK, &headers, "", None)
}

#[derive(Debug, serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
}

pub async fn login(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> PageResult {
    let user = f.user.trim().to_owned();
    if let Err(wait) = console.may_try(&user, ip) {
        tracing::warn!(user = %user, ip = %ip, "console sign-in refused: too many recent failures");
        let msg = format!(
            "Too many failed sign-ins for this user from your address: wait {} s and try again.",
            wait.as_secs().max(1)
        );
        return Ok(login_form(StatusCode::TOO_MANY_REQUESTS, &headers, &user, Some(msg)));
    }
    let Some(principal) = s.store.authenticate_user(&user, &f.password).await? else {
        console.failed(&user, ip);
        tracing::info!(user = %user, ip = %ip, "console sign-in failed");
        return Ok(login_form(
            StatusCode::UNAUTHORIZED,
            &headers,
            &user,
            Some("The user name or password is not right.".to_owned()),
        ));
    };
    console.succeeded(&user, ip);
    let session = s.store.create_session(&user).await?;
    tracing::info!(actor = %principal.actor, ip = %ip, "console sign-in");
    let mut resp = Redirect::to("/").into_response();
    set_cookie(&mut resp, SESSION_COOKIE, &session.secret, SESSION_SECONDS);
    set_cookie(&mut resp, LOGIN_COOKIE, "", 0);
    Ok(resp)
}

pub async fn logout(State(s): State<AppState>, user: ConsoleUser) -> PageResult {
    s.store.delete_session(&user.secret).await?;
    let mut resp = Redirect::to("/login").into_response();
    set_cookie(&mut resp, SESSION_COOKIE, "", 0);
    Ok(resp)
}
