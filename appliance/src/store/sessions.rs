//! Console sessions and console user management. A session cookie holds 256 random bits; the
//! table holds only their SHA-256, so a copy of the database opens no session. The role is read
//! from `users` on every request, so deleting a user or changing a role takes effect at once.
//! Never stores a password or a session secret in clear.

use base64::Engine;
use edgelb_api::{Role, User, UserPatch, UserRole};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{Result, Store, StoreError, audit, begin, ts};

/// How long a console session lasts from sign-in.
pub const SESSION_SECONDS: i64 = 12 * 3600;

/// A session just opened: the cookie secret and the CSRF token for its forms.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub secret: String,
    pub csrf: String,
    pub expires_at: i64,
}

/// The user behind a session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    pub expires_at: i64,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn session_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A password's length, in characters, within [`edgelb_api::PASSWORD_CHARS`].
pub(super) fn check_password(password: &str) -> Result<()> {
    let chars = password.chars().count();
    let range = edgelb_api::PASSWORD_CHARS;
    if !range.contains(&chars) {
        return Err(StoreError::invalid(
            "password",
            format!(
                "a password needs {} to {} characters (this one has {chars})",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(())
}

/// A user's role as stored; `NotFound` for no such user.
async fn role_of(tx: &mut sqlx::SqliteConnection, name: &str) -> Result<String> {
    let role: Option<(String,)> = sqlx::query_as("SELECT role FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    role.map(|(r,)| r)
        .ok_or_else(|| StoreError::NotFound(format!("user '{name}' does not exist")))
}

/// A `Conflict` if `name`, an admin, is the last one: the console must never lock everyone out.
async fn not_the_last_admin(tx: &mut sqlx::SqliteConnection, name: &str, fix: &str) -> Result<()> {
    let (admins,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users WHERE role = 'admin'")
        .fetch_one(&mut *tx)
        .await?;
    match admins <= 1 {
        true => Err(StoreError::Conflict(format!("user '{name}' is the last admin: {fix}"))),
        false => Ok(()),
    }
}

impl Store {
    /// Opens a session for `user` (already authenticated); sweeps expired sessions on the way.
    pub async fn create_session(&self, user: &str) -> Result<NewSession> {
        let user = user.to_owned();
        self.write(move |w, now| {
            Box::pin(async move {
                // Nothing the data plane reads.
                w.touch_nothing();
                let s = NewSession {
                    secret: random_token(),
                    csrf: random_token(),
                    expires_at: now + SESSION_SECONDS,
                };
                let mut tx = begin(&mut w.conn).await?;
                sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO console_sessions (id_hash, \"user\", csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(session_hash(&s.secret))
                .bind(&user)
                .bind(&s.csrf)
                .bind(now)
                .bind(s.expires_at)
                .execute(&mut *tx)
                .await?;
                audit(
                    &mut tx,
                    now,
                    &format!("user:{user}"),
                    "session.login",
                    &format!("user/{user}"),
                    None,
                    None,
                )
                .await?;
                tx.commit().await?;
                Ok(s)
            })
        })
        .await
    }

    /// The live session a cookie secret stands for, or `None` (unknown, expired, user gone).
    pub async fn session(&self, secret: &str) -> Result<Option<Session>> {
        let row: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT s.\"user\", u.role, s.csrf, s.expires_at FROM console_sessions s JOIN users u ON u.name = s.\"user\" \
             WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(session_hash(secret))
        .bind(super::now())
        .fetch_optional(self.read())
        .await?;
        let Some((user, role, csrf, expires_at)) = row else {
            return Ok(None);
        };
        let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role '{role}'")))?;
        Ok(Some(Session {
            user,
            role,
            csrf,
            expires_at,
        }))
    }

    /// Ends a session (sign-out). Ending an unknown session is not an error.
    pub async fn delete_session(&self, secret: &str) -> Result<()> {
        let hash = session_hash(secret);
        self.write(move |w, now| {
            Box::pin(async move {
                // Nothing the data plane reads.
                w.touch_nothing();
                let mut tx = begin(&mut w.conn).await?;
                let user: Option<(String,)> =
                    sqlx::query_as("DELETE FROM console_sessions WHERE id_hash = $1 RETURNING \"user\"")
                        .bind(&hash)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some((user,)) = user {
                    audit(
                        &mut tx,
                        now,
                        &format!("user:{user}"),
                        "session.logout",
                        &format!("user/{user}"),
                        None,
                        None,
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    /// Console users, by name.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        self.users(None).await
    }

    /// One console user.
    pub async fn get_user(&self, name: &str) -> Result<User> {
        self.users(Some(name))
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("user '{name}' does not exist")))
    }

    async fn users(&self, only: Option<&str>) -> Result<Vec<User>> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT u.name, u.role, u.created_at, \
             (SELECT COUNT(*) FROM console_sessions s WHERE s.\"user\" = u.name AND s.expires_at > $1) \
             FROM users u WHERE $2 IS NULL OR u.name = $3 ORDER BY u.name",
        )
        .bind(super::now())
        .bind(only)
        .bind(only)
        .fetch_all(self.read())
        .await?;
        rows.into_iter()
            .map(|(name, role, created_at, sessions)| {
                Ok(User {
                    role: Role::parse(&role)
                        .and_then(UserRole::of)
                        .ok_or_else(|| StoreError::Corrupt(format!("user '{name}' has role '{role}'")))?,
                    name,
                    created_at: ts(created_at),
                    sessions: sessions.max(0) as u64,
                })
            })
            .collect()
    }

    /// Deletes a console user and ends their sessions. The last admin cannot be deleted, so
    /// the console can never lock everyone out.
    pub async fn delete_user(&self, actor: &str, name: &str) -> Result<()> {
        let actor = actor.to_owned();
        let name = name.to_owned();
        self.write(move |w, now| {
            Box::pin(async move {
                // Nothing the data plane reads.
                w.touch_nothing();
                let mut tx = begin(&mut w.conn).await?;
                let role = role_of(&mut tx, &name).await?;
                if role == "admin" {
                    not_the_last_admin(&mut tx, &name, "create another admin first").await?;
                }
                sqlx::query("DELETE FROM users WHERE name = $1")
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
                let before = serde_json::json!({ "role": role });
                audit(
                    &mut tx,
                    now,
                    &actor,
                    "user.delete",
                    &format!("user/{name}"),
                    Some(&before),
                    None,
                )
                .await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    /// Gives a user a new random password and ends all their sessions (for a lost password);
    /// returns the password.
    pub async fn reset_password(&self, actor: &str, name: &str) -> Result<String> {
        let password = super::auth::new_password();
        self.set_password(actor, name, &password, None).await?;
        Ok(password)
    }

    /// Sets a user's password and ends their other sessions (all of them when `keep` is `None`).
    pub async fn set_password(&self, actor: &str, name: &str, password: &str, keep: Option<&str>) -> Result<()> {
        let patch = UserPatch {
            role: None,
            password: Some(password.to_owned()),
        };
        self.update_user(actor, name, patch, keep).await.map(drop)
    }

    /// Changes a user's role and/or password in one transaction, each change audited (never the
    /// password). A new password ends the user's sessions except `keep` (the session of the user
    /// changing their own); a new role applies to open sessions at once, since every request
    /// reads it. The last admin keeps the role, so no one is ever locked out.
    pub async fn update_user(&self, actor: &str, name: &str, patch: UserPatch, keep: Option<&str>) -> Result<User> {
        let hash = match patch.password {
            Some(pw) => {
                check_password(&pw)?;
                Some(tokio::task::spawn_blocking(move || super::auth::hash_password(&pw)).await??)
            }
            None => None,
        };
        let actor = actor.to_owned();
        let owned = name.to_owned();
        let keep = keep.map(session_hash).unwrap_or_default();
        let role = patch.role.map(Role::from);
        self.write(move |w, now| {
            Box::pin(async move {
                let name = owned;
                // Nothing the data plane reads.
                w.touch_nothing();
                let mut tx = begin(&mut w.conn).await?;
                let before = role_of(&mut tx, &name).await?;
                if let Some(role) = role.filter(|r| r.as_str() != before) {
                    if before == "admin" {
                        not_the_last_admin(&mut tx, &name, "make another user admin first").await?;
                    }
                    sqlx::query("UPDATE users SET role = $1 WHERE name = $2")
                        .bind(role.as_str())
                        .bind(&name)
                        .execute(&mut *tx)
                        .await?;
                    audit(
                        &mut tx,
                        now,
                        &actor,
                        "user.role",
                        &format!("user/{name}"),
                        Some(&serde_json::json!({ "role": before })),
                        Some(&serde_json::json!({ "role": role })),
                    )
                    .await?;
                }
                if let Some(hash) = &hash {
                    sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2")
                        .bind(hash)
                        .bind(&name)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM console_sessions WHERE \"user\" = $1 AND id_hash != $2")
                        .bind(&name)
                        .bind(&keep)
                        .execute(&mut *tx)
                        .await?;
                    audit(
                        &mut tx,
                        now,
                        &actor,
                        "user.password",
                        &format!("user/{name}"),
                        None,
                        None,
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            })
        })
        .await?;
        self.get_user(name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn session_lives_until_logout_and_dies_with_its_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        store
            .create_user("test", "alice", "a long enough password", Role::Operator)
            .await
            .expect("user");
        let s = store.create_session("alice").await.expect("session");
        let found = store.session(&s.secret).await.expect("lookup").expect("live");
        assert_eq!((found.user.as_str(), found.role), ("alice", Role::Operator));
        assert_eq!(found.csrf, s.csrf);
        assert_eq!(store.session("not-a-secret").await.expect("lookup"), None);

        store.delete_session(&s.secret).await.expect("logout");
        assert_eq!(store.session(&s.secret).await.expect("lookup"), None);

        let s2 = store.create_session("alice").await.expect("session");
        store.delete_user("test", "alice").await.expect("delete");
        assert_eq!(store.session(&s2.secret).await.expect("lookup"), None);
    }

    #[tokio::test]
    async fn last_admin_cannot_be_deleted_and_password_change_ends_other_sessions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        store.bootstrap().await.expect("bootstrap");
        let err = store.delete_user("test", "admin").await.expect_err("last admin");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

        let mine = store.create_session("admin").await.expect("session");
        let other = store.create_session("admin").await.expect("session");
        store
            .set_password("user:admin", "admin", "another long password", Some(&mine.secret))
            .await
            .expect("password");
        assert!(store.session(&mine.secret).await.expect("lookup").is_some());
        assert!(store.session(&other.secret).await.expect("lookup").is_none());
        assert!(
            store
                .authenticate_user("admin", "another long password")
                .await
                .expect("auth")
                .is_some()
        );
        let short = store
            .set_password("test", "admin", "short", None)
            .await
            .expect_err("short");
        assert!(matches!(short, StoreError::Invalid(_)), "{short:?}");
    }
}
