//! The admin web console: server-rendered HTML pages (askama templates from `web/templates`)
//! and a little vanilla JavaScript (from `web/static`), both compiled into the binary.
//!
//! It owns sessions in cookies, CSRF checks, login rate limiting and the pages and forms. Like
//! the REST API it only calls store functions, with actor `user:<name>`, so a change made here is
//! the same change as through the API. It must never reach past the store, and never accept a
//! bearer token: the API stays bearer-only, the console session-only.

mod assets;
mod chart;
mod forms;
mod graphs;
mod guard;
mod pages;
mod session;
mod view;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use edgelb_api::Role;

use super::AppState;
use crate::store::StoreError;

/// Name of the session cookie.
const SESSION_COOKIE: &str = "elb_session";
/// Name of the cookie carrying the sign-in form's CSRF token (double submit: no session yet).
const LOGIN_COOKIE: &str = "elb_login";

/// The console's pages, forms and assets. Merge into the app's router.
pub fn routes(state: AppState) -> Router<AppState> {
    let console = Arc::new(Console::default());
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/pools", get(pages::pools).post(forms::create_pool))
        .route("/pools/new", get(forms::new_pool))
        .route("/pools/{name}", get(pages::pool))
        .route("/pools/{name}/edit", get(forms::edit_pool).post(forms::update_pool))
        .route(
            "/pools/{name}/delete",
            get(forms::confirm_delete_pool).post(forms::delete_pool),
        )
        .route("/allocations", get(pages::allocations))
        .route("/services", get(pages::services))
        .route("/services/{cluster}/{namespace}/{name}", get(graphs::service))
        .route("/clusters", get(pages::clusters))
        .route("/tokens", get(forms::tokens).post(forms::create_token))
        .route("/tokens/{id}/revoke", post(forms::revoke_token))
        .route("/users", get(forms::users).post(forms::create_user))
        .route("/users/{name}/delete", post(forms::delete_user))
        .route("/users/{name}/password", post(forms::set_password))
        .route("/users/{name}/role", post(forms::set_role))
        .route("/audit", get(pages::audit))
        .route("/history", get(pages::history))
        .route("/static/{*file}", get(assets::serve))
        .layer(axum::middleware::from_fn_with_state(state, guard::guard))
        .layer(Extension(console))
}

/// The console's memory: failed sign-ins and one-time messages. Lost on restart, which only
/// forgives failures and drops a message nobody saw yet.
#[derive(Debug, Default)]
pub struct Console {
    failures: Mutex<HashMap<(String, IpAddr), Failures>>,
    flashes: Mutex<HashMap<String, Flash>>,
    /// The capacity banners as last read, so that a page view does not count every pool's
    /// addresses again when nothing changed.
    capacity: Mutex<Option<CapacityCache>>,
}

#[derive(Debug)]
struct CapacityCache {
    generation: u64,
    read_at: std::time::Instant,
    banners: Arc<Vec<view::CapacityBanner>>,
}

/// Banners are read again after this long even without a change the store counts (a hold
/// ending is none: it forwards nothing).
const CAPACITY_TTL: Duration = Duration::from_secs(10);

impl Console {
    /// The capacity banners: read again after a change, or after [`CAPACITY_TTL`].
    pub async fn capacity_banners(
        &self,
        store: &crate::store::Store,
    ) -> Result<Arc<Vec<view::CapacityBanner>>, StoreError> {
        let generation = store.generation();
        {
            let cache = self.capacity.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.as_ref()
                && c.generation == generation
                && c.read_at.elapsed() < CAPACITY_TTL
            {
                return Ok(c.banners.clone());
            }
        }
        let banners = Arc::new(view::capacity_banners(&store.list_pools().await?));
        *self.capacity.lock().unwrap_or_else(|e| e.into_inner()) = Some(CapacityCache {
            generation,
            read_at: std::time::Instant::now(),
            banners: banners.clone(),
        });
        Ok(banners)
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// No attempt is checked before this.
    until: Instant,
}

/// A message shown once on the next page a session loads; a new token's secret travels this way
/// so that a reload does not show it again.
#[derive(Debug, Clone, Default)]
pub struct Flash {
    pub message: Option<String>,
    pub secret: Option<(String, String)>,
}

/// Failures allowed before sign-ins from one address for one user slow down.
const FREE_FAILURES: u32 = 3;
/// The longest wait between attempts.
const MAX_DELAY: Duration = Duration::from_secs(300);
/// Entries kept at most (a flood of made-up names must not grow memory without bound).
const MAX_ENTRIES: usize = 10_000;

/// The wait imposed after `count` consecutive failures: none for the first few, then doubling.
fn delay_after(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let exp = (count - FREE_FAILURES).min(16);
    Duration::from_secs(1u64 << exp).min(MAX_DELAY)
}

impl Console {
    /// `Err(wait)` while sign-ins for `user` from `ip` must wait.
    fn may_try(&self, user: &str, ip: IpAddr) -> Result<(), Duration> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&(user.to_owned(), ip)) {
            Some(f) if f.until > Instant::now() => Err(f.until - Instant::now()),
            _ => Ok(()),
        }
    }

    fn failed(&self, user: &str, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, f| now.duration_since(f.last) < Duration::from_secs(3600));
        }
        let f = map.entry((user.to_owned(), ip)).or_insert(Failures {
            count: 0,
            last: now,
            until: now,
        });
        // A quiet hour forgives earlier failures.
        if now.duration_since(f.last) > Duration::from_secs(3600) {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        f.until = now + delay_after(f.count);
    }

    fn succeeded(&self, user: &str, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(user.to_owned(), ip));
    }

    fn set_flash(&self, session: &ConsoleUser, flash: Flash) {
        let mut map = self.flashes.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(session.csrf.clone(), flash);
    }

    fn take_flash(&self, session: &ConsoleUser) -> Flash {
        let mut map = self.flashes.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&session.csrf).unwrap_or_default()
    }
}

/// The signed-in console user of a request, placed by the guard.
#[derive(Debug, Clone)]
pub struct ConsoleUser {
    pub name: String,
    pub role: Role,
    /// The session's CSRF token, put into every form.
    pub csrf: String,
    /// The session cookie's secret (to end it, or keep it on a password change).
    secret: String,
    /// The pools past a capacity threshold, worst first, for the banners of a page (read by the
    /// guard for pages only, not for form posts).
    pub capacity: Arc<Vec<view::CapacityBanner>>,
}

impl ConsoleUser {
    pub fn actor(&self) -> String {
        format!("user:{}", self.name)
    }

    pub fn can_operate(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator)
    }

    pub fn can_admin(&self) -> bool {
        self.role == Role::Admin
    }

    fn require_operate(&self) -> Result<(), ConsoleError> {
        if self.can_operate() {
            Ok(())
        } else {
            Err(ConsoleError::forbidden(format!(
                "role '{}' may only look: changes need an operator or admin",
                self.role
            )))
        }
    }

    fn require_admin(&self) -> Result<(), ConsoleError> {
        if self.can_admin() {
            Ok(())
        } else {
            Err(ConsoleError::forbidden(format!(
                "role '{}' may not manage tokens or users: that needs an admin",
                self.role
            )))
        }
    }
}

impl FromRequestParts<AppState> for ConsoleUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ConsoleUser>()
            .cloned()
            .ok_or_else(|| Redirect::to("/login").into_response())
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for ConsoleUser {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<ConsoleUser>().cloned())
    }
}

/// The address the request came from (absent when the router is driven without a socket).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        Ok(ClientIp(ip))
    }
}

/// A failure shown as an HTML page.
#[derive(Debug)]
pub struct ConsoleError {
    pub status: StatusCode,
    pub message: String,
}

impl ConsoleError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ConsoleError {
        ConsoleError {
            status,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> ConsoleError {
        ConsoleError::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> ConsoleError {
        match e {
            StoreError::Invalid(_) => ConsoleError::new(StatusCode::BAD_REQUEST, e.to_string()),
            StoreError::NotFound(m) => ConsoleError::new(StatusCode::NOT_FOUND, m),
            StoreError::Conflict(m) => ConsoleError::new(StatusCode::CONFLICT, m),
            StoreError::Unprocessable(m) => ConsoleError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            other => {
                tracing::error!(error = ?other, "console request failed inside the store");
                ConsoleError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error: see the appliance's log",
                )
            }
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        view::error_page(self.status, &self.message)
    }
}

type PageResult = Result<Response, ConsoleError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_delay_starts_after_free_failures_and_doubles_up_to_a_cap() {
        assert_eq!(delay_after(1), Duration::ZERO);
        assert_eq!(delay_after(2), Duration::ZERO);
        assert_eq!(delay_after(3), Duration::from_secs(1));
        assert_eq!(delay_after(4), Duration::from_secs(2));
        assert_eq!(delay_after(6), Duration::from_secs(8));
        assert_eq!(delay_after(40), MAX_DELAY);
    }

    #[test]
    fn failures_are_counted_per_user_and_address_and_forgiven_on_success() {
        let c = Console::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..FREE_FAILURES {
            assert!(c.may_try("admin", ip).is_ok());
            c.failed("admin", ip);
        }
        assert!(c.may_try("admin", ip).is_err(), "slowed down after repeated failures");
        assert!(c.may_try("admin", other).is_ok(), "another address is not slowed");
        assert!(c.may_try("alice", ip).is_ok(), "another user is not slowed");
        c.succeeded("admin", ip);
        assert!(c.may_try("admin", ip).is_ok());
    }
}
