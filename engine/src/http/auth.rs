//! API authentication: bearer tokens mapped to principals with roles. Tokens are stored as
//! sha256 digests only.

use super::error::{ApiError, problem};
use anyhow::{Context, Result};
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submit runs.
    Submit,
    /// Read runs, history and the ledger.
    Read,
    /// Approve or reject runs at their gate.
    Approve,
    /// Cancel runs.
    Operate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalEntry {
    pub name: String,
    pub token_sha256: String,
    pub roles: Vec<Role>,
    /// Approval groups (a policy's `require_approval` obligation names one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The tenants it may act on (globs; `*` for platform operators). None listed: none.
    #[serde(default)]
    pub tenants: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    pub principals: Vec<PrincipalEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub name: String,
    pub roles: Vec<Role>,
    pub groups: Vec<String>,
    pub tenants: Vec<String>,
}

impl Principal {
    /// Whether it may see and act on `tenant`'s runs and bindings.
    pub fn may_act_on(&self, tenant: &str) -> bool {
        self.tenants
            .iter()
            .any(|t| cogward_policy_sdk::glob_match(t, tenant))
    }

    /// Whether it acts for every tenant (a platform operator).
    pub fn is_platform(&self) -> bool {
        self.tenants.iter().any(|t| t == "*")
    }

    /// Refuse unless it may act on `tenant` (for objects it names, not ones it looks up: an
    /// object of another tenant is answered as not found).
    pub fn require_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        if self.may_act_on(tenant) {
            Ok(())
        } else {
            Err(problem(
                StatusCode::FORBIDDEN,
                "forbidden_tenant",
                format!("principal {:?} may not act on tenant {tenant:?}", self.name),
            ))
        }
    }

    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.roles.contains(&role) {
            Ok(())
        } else {
            Err(problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("principal {:?} lacks the {role:?} role", self.name),
            ))
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<String, Principal>,
}

pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Tokens {
    pub fn from_file(file: TokensFile) -> Self {
        let by_digest = file
            .principals
            .into_iter()
            .map(|p| {
                (
                    p.token_sha256.to_ascii_lowercase(),
                    Principal {
                        name: p.name,
                        roles: p.roles,
                        groups: p.groups,
                        tenants: p.tenants,
                    },
                )
            })
            .collect();
        Self { by_digest }
    }

    /// The principal named `name`, if there is one.
    pub fn by_name(&self, name: &str) -> Option<Principal> {
        self.by_digest.values().find(|p| p.name == name).cloned()
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading tokens file {}", path.display()))?;
        let file: TokensFile = serde_json::from_str(&text)
            .with_context(|| format!("parsing tokens file {}", path.display()))?;
        Ok(Self::from_file(file))
    }

    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let Some(value) = authorization else {
            return Err(problem(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing Authorization: Bearer <token>",
            ));
        };
        let token = value.strip_prefix("Bearer ").ok_or_else(|| {
            problem(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authorization must be a Bearer token",
            )
        })?;
        self.by_digest
            .get(&token_digest(token.trim()))
            .cloned()
            .ok_or_else(|| problem(StatusCode::UNAUTHORIZED, "invalid_token", "unknown token"))
    }
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Arc<Tokens>: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let tokens: Arc<Tokens> = axum::extract::FromRef::from_ref(state);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        tokens.authenticate(header)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_known_bearer_tokens_authenticate() {
        let tokens = Tokens::from_file(TokensFile {
            principals: vec![PrincipalEntry {
                name: "ci".into(),
                token_sha256: token_digest("s3cret"),
                roles: vec![Role::Submit],
                groups: vec![],
                tenants: vec!["acme".into(), "team-*".into()],
            }],
        });
        let p = tokens.authenticate(Some("Bearer s3cret")).unwrap();
        assert_eq!(p.name, "ci");
        assert!(p.require(Role::Submit).is_ok());
        assert_eq!(p.require(Role::Approve).unwrap_err().0.code, "forbidden");
        assert!(p.may_act_on("acme") && p.may_act_on("team-a") && !p.may_act_on("globex"));
        assert!(!p.is_platform());
        assert_eq!(
            tokens.authenticate(None).unwrap_err().0.code,
            "unauthenticated"
        );
        assert_eq!(
            tokens.authenticate(Some("Bearer nope")).unwrap_err().0.code,
            "invalid_token"
        );
        assert_eq!(
            tokens
                .authenticate(Some("Basic s3cret"))
                .unwrap_err()
                .0
                .code,
            "unauthenticated"
        );
    }
}
