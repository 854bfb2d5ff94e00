//! The console's forms: pools (create, edit, delete), tokens (create, revoke) and users. Each
//! POST checks the role (the guard has checked CSRF already), makes one store call as
//! `user:<name>`, and either redirects with a one-time message or shows the form again with the
//! errors next to their fields and the values as typed.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::{Extension, Form};
use edgelb_api::{FieldError, PoolPatch, PoolSpec, Role, TokenSpec};

use super::view::{
    FieldErrors, Layout, PoolDeletePage, PoolForm, PoolFormPage, PoolRow, TokenForm, TokenRow, TokensPage, UserForm,
    UserRow, UsersPage, ago, scheduler_choices, time,
};
use super::{Console, ConsoleError, ConsoleUser, Flash, PageResult};
use crate::http::AppState;
use crate::store::{Store, StoreError};

fn list(text: &str) -> Vec<String> {
    text.split([',', ' ', '\n', '\r', '\t'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The form as a pool spec, or the fields that do not even parse.
fn spec_of(f: &PoolForm) -> Result<PoolSpec, FieldErrors> {
    let mut errors = FieldErrors::default();
    let priority = f.priority.trim().parse::<i32>().unwrap_or_else(|_| {
        errors.add("priority", "a whole number, e.g. 0 or 10");
        0
    });
    let hold_seconds = f.hold_seconds.trim().parse::<u64>().unwrap_or_else(|_| {
        errors.add("hold_seconds", "a number of seconds, e.g. 600");
        0
    });
    // Empty: the default.
    let mut percent = |field: &str, text: &str, default: u8| match text.trim() {
        "" => default,
        t => t.parse::<u8>().unwrap_or_else(|_| {
            errors.add(field, "a whole percentage, e.g. 80");
            0
        }),
    };
    let capacity_warning_percent = percent(
        "capacity_warning_percent",
        &f.capacity_warning_percent,
        edgelb_api::DEFAULT_CAPACITY_WARNING_PERCENT,
    );
    let capacity_critical_percent = percent(
        "capacity_critical_percent",
        &f.capacity_critical_percent,
        edgelb_api::DEFAULT_CAPACITY_CRITICAL_PERCENT,
    );
    let forwarding = match f.forwarding.trim() {
        "" => None,
        m => m.parse().map_err(|e: String| errors.add("forwarding", e)).ok(),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PoolSpec {
        name: f.name.trim().to_owned(),
        ranges: f
            .ranges
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        auto_assign: f.auto_assign.is_some(),
        avoid_buggy_ips: f.avoid_buggy_ips.is_some(),
        priority,
        clusters: list(&f.clusters),
        namespaces: list(&f.namespaces),
        scheduler: f.scheduler.trim().to_owned(),
        hold_seconds,
        forwarding,
        capacity_warning_percent,
        capacity_critical_percent,
        // Not on the form: set with the API (`PATCH /api/v1/pools/{name}`), shown on the pool page.
        health: None,
    })
}

/// Places store field errors on the form: `ranges[1]` goes to the ranges box as "line 2".
fn place(errors: &mut FieldErrors, list: Vec<FieldError>) {
    for e in list {
        match e.field.split_once('[') {
            Some((field, rest)) => {
                let line = rest
                    .trim_end_matches(']')
                    .parse::<usize>()
                    .map(|i| format!("line {}: ", i + 1))
                    .unwrap_or_default();
                errors.add(field, format!("{line}{}", e.message));
            }
            None => errors.add(&e.field, e.message),
        }
    }
}

/// A store refusal of a pool form as field errors; `Err` for what is not the form's fault.
fn pool_errors(e: StoreError) -> Result<FieldErrors, ConsoleError> {
    let mut errors = FieldErrors::default();
    match e {
        StoreError::Invalid(list) => place(&mut errors, list),
        StoreError::Conflict(m) if m.contains("already exists") => errors.add("name", m),
        StoreError::Conflict(m) | StoreError::Unprocessable(m) if m.contains("range") => errors.add("ranges", m),
        StoreError::Conflict(m) | StoreError::Unprocessable(m) => errors.add("", m),
        other => return Err(other.into()),
    }
    Ok(errors)
}

fn pool_form(
    store: &Store,
    user: &ConsoleUser,
    editing: Option<String>,
    form: PoolForm,
    errors: FieldErrors,
) -> PoolFormPage {
    let title = match &editing {
        Some(n) => format!("Edit pool {n}"),
        None => "New pool".to_owned(),
    };
    PoolFormPage {
        l: Layout::new(user, "pools", title, &Flash::default()),
        editing,
        form,
        errors,
        schedulers: scheduler_choices(&store.capabilities()),
    }
}

pub async fn new_pool(State(s): State<AppState>, user: ConsoleUser) -> PageResult {
    user.require_operate()?;
    Ok(pool_form(&s.store, &user, None, PoolForm::new_default(), FieldErrors::default()).into_response())
}

pub async fn create_pool(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Form(form): Form<PoolForm>,
) -> PageResult {
    user.require_operate()?;
    let spec = match spec_of(&form) {
        Ok(spec) => spec,
        Err(errors) => {
            return Ok((StatusCode::BAD_REQUEST, pool_form(&s.store, &user, None, form, errors)).into_response());
        }
    };
    match s.store.create_pool(&user.actor(), spec).await {
        Ok(pool) => {
            let name = pool.spec.name;
            console.set_flash(
                &user,
                Flash {
                    message: Some(format!("Pool {name} created.")),
                    ..Flash::default()
                },
            );
            Ok(Redirect::to(&format!("/pools/{name}")).into_response())
        }
        Err(e) => {
            let errors = pool_errors(e)?;
            Ok((StatusCode::BAD_REQUEST, pool_form(&s.store, &user, None, form, errors)).into_response())
        }
    }
}

pub async fn edit_pool(State(s): State<AppState>, user: ConsoleUser, Path(name): Path<String>) -> PageResult {
    user.require_operate()?;
    let pool = s.store.get_pool(&name).await?;
    Ok(pool_form(
        &s.store,
        &user,
        Some(name),
        PoolForm::of(&pool.spec),
        FieldErrors::default(),
    )
    .into_response())
}

pub async fn update_pool(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Path(name): Path<String>,
    Form(mut form): Form<PoolForm>,
) -> PageResult {
    user.require_operate()?;
    // The name is not editable: the form shows the one in the path.
    form.name = name.clone();
    let spec = match spec_of(&form) {
        Ok(spec) => spec,
        Err(errors) => {
            return Ok((
                StatusCode::BAD_REQUEST,
                pool_form(&s.store, &user, Some(name), form, errors),
            )
                .into_response());
        }
    };
    let patch = PoolPatch {
        ranges: Some(spec.ranges),
        auto_assign: Some(spec.auto_assign),
        avoid_buggy_ips: Some(spec.avoid_buggy_ips),
        priority: Some(spec.priority),
        clusters: Some(spec.clusters),
        namespaces: Some(spec.namespaces),
        scheduler: Some(spec.scheduler),
        hold_seconds: Some(spec.hold_seconds),
        // The form has no health fields: an edit keeps the pool's overrides.
        health: None,
        forwarding: Some(spec.forwarding),
        capacity_warning_percent: Some(spec.capacity_warning_percent),
        capacity_critical_percent: Some(spec.capacity_critical_percent),
    };
    match s.store.patch_pool(&user.actor(), &name, patch).await {
        Ok(_) => {
            console.set_flash(
                &user,
                Flash {
                    message: Some(format!("Pool {name} saved.")),
                    ..Flash::default()
                },
            );
            Ok(Redirect::to(&format!("/pools/{name}")).into_response())
        }
        Err(StoreError::NotFound(m)) => Err(ConsoleError::new(StatusCode::NOT_FOUND, m)),
        Err(e) => {
            let errors = pool_errors(e)?;
            Ok((
                StatusCode::BAD_REQUEST,
                pool_form(&s.store, &user, Some(name), form, errors),
            )
                .into_response())
        }
    }
}

pub async fn confirm_delete_pool(State(s): State<AppState>, user: ConsoleUser, Path(name): Path<String>) -> PageResult {
    user.require_operate()?;
    let pool = s.store.get_pool(&name).await?;
    Ok(PoolDeletePage {
        l: Layout::new(&user, "pools", format!("Delete pool {name}"), &Flash::default()),
        pool: PoolRow::of(&pool),
        refusal: None,
    }
    .into_response())
}

pub async fn delete_pool(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Path(name): Path<String>,
) -> PageResult {
    user.require_operate()?;
    match s.store.delete_pool(&user.actor(), &name).await {
        Ok(()) => {
            console.set_flash(
                &user,
                Flash {
                    message: Some(format!("Pool {name} deleted.")),
                    ..Flash::default()
                },
            );
            Ok(Redirect::to("/pools").into_response())
        }
        Err(StoreError::Conflict(m) | StoreError::Unprocessable(m)) => {
            let pool = s.store.get_pool(&name).await?;
            Ok((
                StatusCode::CONFLICT,
                PoolDeletePage {
                    l: Layout::new(&user, "pools", format!("Delete pool {name}"), &Flash::default()),
                    pool: PoolRow::of(&pool),
                    refusal: Some(m),
                },
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

// ---- tokens ----

async fn tokens_page(
    s: &AppState,
    user: &ConsoleUser,
    flash: Flash,
    form: TokenForm,
    errors: FieldErrors,
) -> Result<TokensPage, ConsoleError> {
    let tokens = s.store.list_tokens().await?;
    let clusters = s.store.list_clusters().await?;
    Ok(TokensPage {
        l: Layout::new(user, "tokens", "Tokens", &flash),
        tokens: tokens
            .into_iter()
            .map(|t| TokenRow {
                created: time(t.created_at),
                last_used: ago(t.last_used_at),
                id: t.id,
                name: t.name,
                role: t.role.to_string(),
                cluster: t.cluster.unwrap_or_default(),
                created_by: t.created_by,
            })
            .collect(),
        clusters: clusters.into_iter().map(|c| c.name).collect(),
        secret: flash.secret,
        form,
        errors,
    })
}

pub async fn tokens(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
) -> PageResult {
    user.require_admin()?;
    let flash = console.take_flash(&user);
    let form = TokenForm {
        role: "agent".into(),
        ..TokenForm::default()
    };
    Ok(tokens_page(&s, &user, flash, form, FieldErrors::default())
        .await?
        .into_response())
}

pub async fn create_token(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Form(form): Form<TokenForm>,
) -> PageResult {
    user.require_admin()?;
    let mut errors = FieldErrors::default();
    let role = Role::parse(&form.role);
    if role.is_none() {
        errors.add("role", "choose admin, operator, viewer or agent");
    }
    let cluster = form.cluster.trim();
    let spec = TokenSpec {
        name: form.name.trim().to_owned(),
        role: role.unwrap_or(Role::Viewer),
        // Only agent tokens take a cluster; the select keeps a value for the others.
        cluster: (role == Some(Role::Agent) && !cluster.is_empty()).then(|| cluster.to_owned()),
    };
    if errors.is_empty() {
        match s.store.create_token(&user.actor(), spec).await {
            Ok(created) => {
                console.set_flash(
                    &user,
                    Flash {
                        message: None,
                        secret: Some((created.token.name, created.secret)),
                    },
                );
                return Ok(Redirect::to("/tokens").into_response());
            }
            Err(StoreError::Invalid(list)) => place(&mut errors, list),
            Err(StoreError::Unprocessable(m)) => errors.add("cluster", m),
            Err(StoreError::Conflict(m)) => errors.add("name", m),
            Err(e) => return Err(e.into()),
        }
    }
    let page = tokens_page(&s, &user, Flash::default(), form, errors).await?;
    Ok((StatusCode::BAD_REQUEST, page).into_response())
}

pub async fn revoke_token(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Path(id): Path<String>,
) -> PageResult {
    user.require_admin()?;
    s.store.revoke_token(&user.actor(), &id).await?;
    console.set_flash(
        &user,
        Flash {
            message: Some(format!("Token {id} revoked: it no longer works.")),
            ..Flash::default()
        },
    );
    Ok(Redirect::to("/tokens").into_response())
}

// ---- users ----

async fn users_page(
    s: &AppState,
    user: &ConsoleUser,
    flash: Flash,
    form: UserForm,
    errors: FieldErrors,
) -> Result<UsersPage, ConsoleError> {
    let users = s.store.list_users().await?;
    Ok(UsersPage {
        l: Layout::new(user, "users", "Users", &flash),
        users: users
            .into_iter()
            .map(|u| UserRow {
                me: u.name == user.name,
                created: time(u.created_at),
                role: u.role.to_string(),
                sessions: u.sessions,
                name: u.name,
            })
            .collect(),
        form,
        errors,
    })
}

pub async fn users(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
) -> PageResult {
    user.require_admin()?;
    let flash = console.take_flash(&user);
    let form = UserForm {
        role: "viewer".into(),
        ..UserForm::default()
    };
    Ok(users_page(&s, &user, flash, form, FieldErrors::default())
        .await?
        .into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct NewUserForm {
    name: String,
    role: String,
    password: String,
}

pub async fn create_user(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Form(f): Form<NewUserForm>,
) -> PageResult {
    user.require_admin()?;
    let mut errors = FieldErrors::default();
    let name = f.name.trim().to_owned();
    match Role::parse(&f.role) {
        Some(role) if role != Role::Agent => match s.store.create_user(&user.actor(), &name, &f.password, role).await {
            Ok(()) => {
                console.set_flash(
                    &user,
                    Flash {
                        message: Some(format!("User {name} created with role {role}.")),
                        ..Flash::default()
                    },
                );
                return Ok(Redirect::to("/users").into_response());
            }
            Err(StoreError::Invalid(list)) => place(&mut errors, list),
            Err(StoreError::Conflict(m)) => errors.add("name", m),
            Err(e) => return Err(e.into()),
        },
        _ => errors.add("role", "choose admin, operator or viewer"),
    }
    let form = UserForm { name, role: f.role };
    let page = users_page(&s, &user, Flash::default(), form, errors).await?;
    Ok((StatusCode::BAD_REQUEST, page).into_response())
}

pub async fn delete_user(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Path(name): Path<String>,
) -> PageResult {
    user.require_admin()?;
    if name == user.name {
        return Err(ConsoleError::new(
            StatusCode::CONFLICT,
            "you cannot delete yourself: sign in as another admin to do that",
        ));
    }
    s.store.delete_user(&user.actor(), &name).await?;
    console.set_flash(
        &user,
        Flash {
            message: Some(format!("User {name} deleted; their sessions ended.")),
            ..Flash::default()
        },
    );
    Ok(Redirect::to("/users").into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct PasswordForm {
    password: String,
}

pub async fn set_password(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Path(name): Path<String>,
    Form(f): Form<PasswordForm>,
) -> PageResult {
    user.require_admin()?;
    let keep = (name == user.name).then_some(user.secret.as_str());
    match s.store.set_password(&user.actor(), &name, &f.password, keep).await {
        Ok(()) => {
            console.set_flash(
                &user,
                Flash {
                    message: Some(format!("Password of {name} changed; their other sessions ended.")),
                    ..Flash::default()
                },
            );
            Ok(Redirect::to("/users").into_response())
        }
        Err(StoreError::Invalid(list)) => {
            let mut errors = FieldErrors::default();
            for e in list {
                errors.add(&format!("password-{name}"), e.message);
            }
            let form = UserForm {
                role: "viewer".into(),
                ..UserForm::default()
            };
            let page = users_page(&s, &user, Flash::default(), form, errors).await?;
            Ok((StatusCode::BAD_REQUEST, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct RoleForm {
    role: String,
}

/// Changes another user's role; it applies to their open sessions at once. The last admin
/// stays one (a 409 that says so).
pub async fn set_role(
    State(s): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    user: ConsoleUser,
    Path(name): Path<String>,
    Form(f): Form<RoleForm>,
) -> PageResult {
    user.require_admin()?;
    let role = Role::parse(&f.role)
        .and_then(edgelb_api::UserRole::of)
        .ok_or_else(|| ConsoleError::new(StatusCode::BAD_REQUEST, "choose admin, operator or viewer"))?;
    let patch = edgelb_api::UserPatch {
        role: Some(role),
        password: None,
    };
    s.store.update_user(&user.actor(), &name, patch, None).await?;
    console.set_flash(
        &user,
        Flash {
            message: Some(format!(
                "{name} is now {role}; it applies to their open sessions at once."
            )),
            ..Flash::default()
        },
    );
    Ok(Redirect::to("/users").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_field_errors_land_on_their_form_fields() {
        let mut errors = FieldErrors::default();
        place(
            &mut errors,
            vec![
                FieldError {
                    field: "ranges[1]".into(),
                    message: "bad".into(),
                },
                FieldError {
                    field: "name".into(),
                    message: "too long".into(),
                },
            ],
        );
        assert_eq!(errors.of("ranges"), ["line 2: bad"]);
        assert_eq!(errors.of("name"), ["too long"]);
    }

    #[test]
    fn the_pool_form_parses_lists_and_numbers() {
        let form = PoolForm {
            name: " web ".into(),
            ranges: "10.0.0.0/30\r\n\r\n10.0.1.0/30\n".into(),
            clusters: "prod, staging".into(),
            priority: "x".into(),
            hold_seconds: "10".into(),
            ..PoolForm::default()
        };
        let errors = spec_of(&form).expect_err("priority is not a number");
        assert!(errors.has("priority"));
        let spec = spec_of(&PoolForm {
            priority: "5".into(),
            ..form
        })
        .expect("valid");
        assert_eq!(spec.name, "web");
        assert_eq!(spec.ranges, ["10.0.0.0/30", "10.0.1.0/30"]);
        assert_eq!(spec.clusters, ["prod", "staging"]);
        assert!(!spec.auto_assign);
    }
}
