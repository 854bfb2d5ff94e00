//! Tokens (bearer secrets, stored as SHA-256: they are 256 random bits, so a slow hash would
//! only slow every request), console users (passwords as argon2id), and the first-start
//! credentials.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use edgelb_api::{Role, Token, TokenCreated, TokenSpec};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Result, Store, StoreError, audit, begin, ts};
use crate::ipam::check_name;

const TOKEN_PREFIX: &str = "elb_";

/// How long a verified token is trusted without reading the database again. Revoking a token or
/// deleting its cluster through this store empties the cache at once; the lifetime only bounds
/// how long a change made by another process (a restored backup) takes to show.
const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Verified secrets (by their SHA-256) and whom they stand for.
pub(super) type TokenCache = std::collections::HashMap<Vec<u8>, (Principal, std::time::Instant)>;

/// Who is calling, as established from a token or a console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `token:<name>/<id>` (names need not be unique; the id says which token) or
    /// `user:<name>`, as written in the audit log.
    pub actor: String,
    pub role: Role,
    /// The cluster an agent token is bound to.
    pub cluster: Option<String>,
    /// The token's id (for tokens).
    pub token_id: Option<String>,
}

/// The credentials made on the very first start; shown once, stored only hashed.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub user: String,
    pub password: String,
    pub token: String,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A new token: `elb_<id>_<secret>`, the id to find the row, the rest never stored.
fn new_secret() -> (String, String) {
    let id = hex::encode(random_bytes::<6>());
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    (id.clone(), format!("{TOKEN_PREFIX}{id}_{secret}"))
}

fn token_id(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(TOKEN_PREFIX)?;
    let (id, _) = rest.split_once('_')?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// An argon2id hash of a password, in PHC form.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = random_bytes::<16>();
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Corrupt(format!("hashing a password failed: {e}")))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// What an unknown user's password is checked against, so that the answer takes as long as
/// for a real user.
static UNKNOWN_USER_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("no user has this password").unwrap_or_default());

/// A random password a person can type: 20 characters of an unambiguous alphabet (~100 bits).
/// A random password of 20 letters and digits (about 115 bits), easy to read aloud.
pub fn new_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes = random_bytes::<20>();
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

#[derive(sqlx::FromRow)]
struct SecretRow {
    name: String,
    role: String,
    cluster: Option<String>,
    secret_hash: Vec<u8>,
    last_used_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    name: String,
    role: String,
    cluster: Option<String>,
    created_by: String,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl TokenRow {
    fn token(self) -> Result<Token> {
        Ok(Token {
            role: Role::parse(&self.role).ok_or_else(|| StoreError::Corrupt(format!("role '{}'", self.role)))?,
            id: self.id,
            name: self.name,
            cluster: self.cluster,
            created_by: self.created_by,
            created_at: ts(self.created_at),
            last_used_at: self.last_used_at.map(ts),
        })
    }
}

impl Store {
    fn cached_token(&self, hashed: &[u8]) -> Option<Principal> {
        let cache = self.inner.token_cache.lock().ok()?;
        cache
            .get(hashed)
            .filter(|(_, at)| at.elapsed() < TOKEN_CACHE_TTL)
            .map(|(p, _)| p.clone())
    }

    fn token_generation(&self) -> u64 {
        self.inner.token_generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn cache_token(&self, hashed: Vec<u8>, principal: &Principal, generation: u64) {
        if let Ok(mut cache) = self.inner.token_cache.lock() {
            if self.token_generation() != generation {
                return;
            }
            // Bounded: a flood of distinct valid tokens cannot grow it without limit.
            if cache.len() >= 10_000 {
                cache.clear();
            }
            cache.insert(hashed, (principal.clone(), std::time::Instant::now()));
        }
    }

    /// Forgets every verified token (after a revocation or a cluster deletion).
    pub(super) fn forget_tokens(&self) {
        self.inner
            .token_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut cache) = self.inner.token_cache.lock() {
            cache.clear();
        }
    }

    /// Creates a token; its secret is in the answer and nowhere else.
    pub async fn create_token(&self, actor: &str, spec: TokenSpec) -> Result<TokenCreated> {
        check_name(&spec.name).map_err(|m| StoreError::invalid("name", m))?;
        match (spec.role, &spec.cluster) {
            (Role::Agent, None) => {
                return Err(StoreError::invalid(
                    "cluster",
                    "an agent token must name the cluster it serves",
                ));
            }
            (Role::Agent, Some(_)) | (_, None) => {}
            (role, Some(_)) => {
                return Err(StoreError::invalid(
                    "cluster",
                    format!("only agent tokens are bound to a cluster, not {role} tokens"),
                ));
            }
        }
        let actor = actor.to_owned();
        self.write(move |w, now| {
            Box::pin(async move {
                // Nothing the data plane reads.
                w.touch_nothing();
                let mut tx = begin(&mut w.conn).await?;
                if let Some(c) = &spec.cluster {
                    let found: Option<(String,)> =
                        sqlx::query_as("SELECT name FROM clusters WHERE name = $1").bind(c).fetch_optional(&mut *tx).await?;
                    if found.is_none() {
                        return Err(StoreError::Unprocessable(format!(
                            "cluster '{c}' does not exist: create it first (POST /api/v1/clusters)"
                        )));
                    }
                }
                let (id, secret) = new_secret();
                sqlx::query(
                    "INSERT INTO tokens (id, name, role, cluster, secret_hash, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&id)
                .bind(&spec.name)
                .bind(spec.role.as_str())
                .bind(&spec.cluster)
                .bind(hash_secret(&secret))
                .bind(&actor)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let after = serde_json::json!({"id": id, "name": spec.name, "role": spec.role, "cluster": spec.cluster});
                audit(&mut tx, now, &actor, "token.create", &format!("token/{id}"), None, Some(&after)).await?;
                tx.commit().await?;
                let token = Token {
                    id,
                    name: spec.name,
                    role: spec.role,
                    cluster: spec.cluster,
                    created_by: actor,
                    created_at: ts(now),
                    last_used_at: None,
                };
                Ok(TokenCreated { token, secret })
            })
        })
        .await
    }

    pub async fn list_tokens(&self) -> Result<Vec<Token>> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, name, role, cluster, created_by, created_at, last_used_at FROM tokens ORDER BY created_at, id",
        )
        .fetch_all(self.read())
        .await?;
        rows.into_iter().map(TokenRow::token).collect()
    }

    /// Revokes a token: it stops working at once.
    pub async fn revoke_token(&self, actor: &str, id: &str) -> Result<()> {
        let actor = actor.to_owned();
        let id = id.to_owned();
        let revoked = self
            .write(move |w, now| {
                Box::pin(async move {
                    // Nothing the data plane reads.
                    w.touch_nothing();
                    let mut tx = begin(&mut w.conn).await?;
                    let row: Option<TokenRow> = sqlx::query_as(
                        "SELECT id, name, role, cluster, created_by, created_at, last_used_at FROM tokens WHERE id = $1",
                    )
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let token = row
                        .ok_or_else(|| StoreError::NotFound(format!("token '{id}' does not exist")))?
                        .token()?;
                    sqlx::query("DELETE FROM tokens WHERE id = $1")
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    let before =
                        serde_json::json!({"id": id, "name": token.name, "role": token.role, "cluster": token.cluster});
                    audit(
                        &mut tx,
                        now,
                        &actor,
                        "token.revoke",
                        &format!("token/{id}"),
                        Some(&before),
                        None,
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(())
                })
            })
            .await;
        self.forget_tokens();
        revoked
    }

    /// The principal a bearer secret stands for, or `None` when it is unknown or revoked.
    pub async fn authenticate_token(&self, secret: &str) -> Result<Option<Principal>> {
        let Some(id) = token_id(secret) else { return Ok(None) };
        let hashed = hash_secret(secret);
        if let Some(p) = self.cached_token(&hashed) {
            return Ok(Some(p));
        }
        let generation = self.token_generation();
        let row: Option<SecretRow> =
            sqlx::query_as("SELECT name, role, cluster, secret_hash, last_used_at FROM tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(self.read())
                .await?;
        let Some(SecretRow {
            name,
            role,
            cluster,
            secret_hash: hash,
            last_used_at: last_used,
        }) = row
        else {
            return Ok(None);
        };
        if !bool::from(hashed.ct_eq(&hash)) {
            return Ok(None);
        }
        let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role '{role}'")))?;
        // Recording every use would put a write on every request: once a minute is enough.
        if last_used.is_none_or(|t| super::now() - t >= 60) {
            let id = id.to_owned();
            self.write(move |w, now| {
                Box::pin(async move {
                    // Nothing the data plane reads.
                    w.touch_nothing();
                    sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(id)
                        .execute(&mut w.conn)
                        .await?;
                    Ok(())
                })
            })
            .await?;
        }
        let principal = Principal {
            actor: format!("token:{name}/{id}"),
            role,
            cluster,
            token_id: Some(id.to_owned()),
        };
        self.cache_token(hashed, &principal, generation);
        Ok(Some(principal))
    }

    /// Creates a console user.
    pub async fn create_user(&self, actor: &str, name: &str, password: &str, role: Role) -> Result<()> {
        check_name(name).map_err(|m| StoreError::invalid("name", m))?;
        if role == Role::Agent {
            return Err(StoreError::invalid(
                "role",
                "console users are admin, operator or viewer",
            ));
        }
        super::sessions::check_password(password)?;
        let pw = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || hash_password(&pw)).await??;
        let actor = actor.to_owned();
        let name = name.to_owned();
        self.write(move |w, now| {
            Box::pin(async move {
                // Nothing the data plane reads.
                w.touch_nothing();
                let mut tx = begin(&mut w.conn).await?;
                sqlx::query("INSERT INTO users (name, password_hash, role, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(&name)
                    .bind(&hash)
                    .bind(role.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::on_unique(e, || format!("user '{name}' already exists")))?;
                audit(
                    &mut tx,
                    now,
                    &actor,
                    "user.create",
                    &format!("user/{name}"),
                    None,
                    Some(&serde_json::json!({"role": role})),
                )
                .await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    /// The principal for a user name and password, or `None`.
    pub async fn authenticate_user(&self, name: &str, password: &str) -> Result<Option<Principal>> {
        let row: Option<(String, String)> = sqlx::query_as("SELECT password_hash, role FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(self.read())
            .await?;
        // Verify against a hash even for an unknown user, so timing does not tell who exists.
        let (hash, role) = row.unwrap_or_else(|| (String::new(), String::new()));
        let pw = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            if hash.is_empty() {
                // Same work as for a real user, answer always no.
                let _ = verify_password(&pw, &UNKNOWN_USER_HASH);
                false
            } else {
                verify_password(&pw, &hash)
            }
        })
        .await?;
        match (ok, Role::parse(&role)) {
            (true, Some(role)) => Ok(Some(Principal {
                actor: format!("user:{name}"),
                role,
                cluster: None,
                token_id: None,
            })),
            _ => Ok(None),
        }
    }

    /// On the very first start (no user and no token yet) creates the admin user and an admin
    /// token and returns their secrets, to be shown once.
    pub async fn bootstrap(&self) -> Result<Option<Bootstrap>> {
        let (users, tokens): (i64, i64) =
            sqlx::query_as("SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM tokens)")
                .fetch_one(self.read())
                .await?;
        if users > 0 || tokens > 0 {
            return Ok(None);
        }
        let password = new_password();
        self.create_user("system", "admin", &password, Role::Admin).await?;
        let token = self
            .create_token(
                "system",
                TokenSpec {
                    name: "admin".into(),
                    role: Role::Admin,
                    cluster: None,
                },
            )
            .await?;
        Ok(Some(Bootstrap {
            user: "admin".into(),
            password,
            token: token.secret,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_id_is_read_from_well_formed_secrets_only() {
        let (id, secret) = new_secret();
        assert_eq!(token_id(&secret), Some(id.as_str()));
        assert_eq!(token_id("elb_zz_abc"), None);
        assert_eq!(token_id("Bearer x"), None);
    }

    #[test]
    fn password_hash_verifies_only_the_same_password() {
        let h = hash_password("correct horse battery").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterx", &h));
    }
}
