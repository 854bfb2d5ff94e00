//! Who is calling and what they may do. Bearer tokens for the API; roles admin, operator,
//! viewer, and agent (bound to one cluster: its Services, nodes and sync, never pools, never
//! another cluster). 401 when the caller is unknown, 403 when the role does not allow it.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use edgelb_api::Role;

use super::{ApiError, AppState};
use crate::store::Principal;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing 'Authorization: Bearer <token>' header"))?;
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer <token>'"))?;
        let principal = state
            .store
            .authenticate_token(secret)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the token is unknown or has been revoked"))?;
        if let (Role::Agent, Some(cluster)) = (principal.role, &principal.cluster) {
            let agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
            if let Err(e) = state.store.touch_cluster(cluster, agent).await {
                tracing::warn!(cluster = %cluster, error = %e, "recording the agent's contact failed");
            }
        }
        Ok(Caller(principal))
    }
}

impl Caller {
    pub fn actor(&self) -> &str {
        &self.0.actor
    }

    fn deny(&self, what: &str) -> ApiError {
        ApiError::forbidden(format!("role '{}' may not {what}", self.0.role))
    }

    /// Reading pools, allocations, clusters, the audit log: admin, operator, viewer.
    pub fn can_read(&self, what: &str) -> Result<(), ApiError> {
        match self.0.role {
            Role::Admin | Role::Operator | Role::Viewer => Ok(()),
            Role::Agent => Err(self.deny(what)),
        }
    }

    /// Changing pools and clusters: admin, operator.
    pub fn can_operate(&self, what: &str) -> Result<(), ApiError> {
        match self.0.role {
            Role::Admin | Role::Operator => Ok(()),
            _ => Err(self.deny(what)),
        }
    }

    /// Tokens and users: admin.
    pub fn can_admin(&self, what: &str) -> Result<(), ApiError> {
        match self.0.role {
            Role::Admin => Ok(()),
            _ => Err(self.deny(what)),
        }
    }

    /// A cluster's Services, nodes and sync: admin and operator on any cluster, a viewer to
    /// read, an agent only on its own cluster.
    pub fn can_cluster(&self, cluster: &str, write: bool, what: &str) -> Result<(), ApiError> {
        match (self.0.role, &self.0.cluster) {
            (Role::Admin | Role::Operator, _) => Ok(()),
            (Role::Viewer, _) if !write => Ok(()),
            (Role::Agent, Some(own)) if own == cluster => Ok(()),
            (Role::Agent, Some(own)) => Err(ApiError::forbidden(format!(
                "this agent token is bound to cluster '{own}' and may not touch cluster '{cluster}'"
            ))),
            _ => Err(self.deny(what)),
        }
    }
}
