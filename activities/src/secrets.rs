//! Scoped secrets, on the worker's side: a run spec names references; at run start the
//! `StartRunner` activity resolves them for the run's tenant — from the secrets file, else from
//! the engine's environment — and hands the values to the runner on its standard input. Only
//! names and digests go into the request, history and the ledger.
//!
//! The secrets file (`COGWARD_SECRETS_FILE`, default `<state-dir>/secrets.json`, readable by
//! root alone) maps tenants to names to values: `{"tenants": {"acme": {"github_token":
//! "…"}}}`. The environment form is `COGWARD_SECRET__<TENANT>__<NAME>`, both upper-cased with
//! every character outside `[A-Z0-9]` turned into `_`.

use cogward_protocol::runner::SecretRef;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name:?} is not configured for tenant {tenant:?}")]
    Missing { tenant: String, name: String },
    #[error("the secrets file {path}: {detail}")]
    File { path: PathBuf, detail: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    #[serde(default)]
    tenants: BTreeMap<String, BTreeMap<String, String>>,
}

/// The environment variable that may hold `tenant`'s secret `name`.
pub fn env_name(tenant: &str, name: &str) -> String {
    let part = |s: &str| -> String {
        s.chars()
            .map(|c| {
                let c = c.to_ascii_uppercase();
                if c.is_ascii_alphanumeric() { c } else { '_' }
            })
            .collect()
    };
    format!("COGWARD_SECRET__{}__{}", part(tenant), part(name))
}

/// The values of `names` for `tenant`, as (name, value), read now (so a rotated secret is
/// picked up by the next run). `env` looks a variable up (the process environment in the
/// engine; a table in tests).
pub fn resolve(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    tenant: &str,
    names: &[String],
) -> Result<Vec<(String, String)>, SecretError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let doc = match file {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SecretError::File {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SecretsFile::default(),
            Err(e) => {
                return Err(SecretError::File {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                });
            }
        },
        None => SecretsFile::default(),
    };
    let of_tenant = doc.tenants.get(tenant);
    names
        .iter()
        .map(|name| {
            of_tenant
                .and_then(|t| t.get(name).cloned())
                .or_else(|| env(&env_name(tenant, name)))
                .map(|v| (name.clone(), v))
                .ok_or_else(|| SecretError::Missing {
                    tenant: tenant.to_string(),
                    name: name.clone(),
                })
        })
        .collect()
}

/// Names and digests: what the request, history and the ledger carry.
pub fn references(values: &[(String, String)]) -> Vec<SecretRef> {
    values
        .iter()
        .map(|(name, value)| SecretRef {
            name: name.clone(),
            sha256: hex::encode(Sha256::digest(value.as_bytes())),
        })
        .collect()
}

/// What the runner reads on its standard input.
pub fn runner_input(values: &[(String, String)]) -> Vec<u8> {
    let map: BTreeMap<&str, &str> = values
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    serde_json::to_vec(&map).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_first_then_environment_and_only_the_runs_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.json");
        std::fs::write(
            &file,
            r#"{"tenants": {"acme": {"gh": "from-file"}, "globex": {"db": "theirs"}}}"#,
        )
        .unwrap();
        let env = |k: &str| (k == "COGWARD_SECRET__ACME__NPM_TOKEN").then(|| "from-env".into());
        let got = resolve(
            Some(&file),
            &env,
            "acme",
            &["gh".into(), "npm-token".into()],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                ("gh".into(), "from-file".into()),
                ("npm-token".into(), "from-env".into())
            ]
        );
        assert!(matches!(
            resolve(Some(&file), &env, "acme", &["db".into()]),
            Err(SecretError::Missing { .. })
        ));
        assert_eq!(resolve(None, &env, "acme", &[]).unwrap(), []);
        std::fs::write(&file, "not json").unwrap();
        assert!(matches!(
            resolve(Some(&file), &env, "acme", &["gh".into()]),
            Err(SecretError::File { .. })
        ));
    }

    #[test]
    fn references_carry_digests_never_values() {
        let refs = references(&[("gh".into(), "s3cr3t".into())]);
        let text = serde_json::to_string(&refs).unwrap();
        assert!(!text.contains("s3cr3t"));
        assert_eq!(refs[0].sha256, hex::encode(Sha256::digest(b"s3cr3t")));
    }
}
