//! `cogward serve` (API + history mirror, optionally the worker) and `cogward dev` (the same,
//! plus an embedded Temporal dev server and development credentials).

use crate::audit::Ledger;
use crate::audit::mirror::{Mirror, MirrorWake};
use crate::config::EngineConfig;
use crate::db::Db;
use crate::gateway::Gateway;
use crate::gateway::config::GatewayConfig;
use crate::http::auth::{PrincipalEntry, Role, Tokens, TokensFile, token_digest};
use crate::http::{self, AppState};
use crate::policy::Policies;
use crate::temporal;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// File `cogward dev` writes the development tokens to (name → token), read by the CLI.
pub const DEV_CREDENTIALS: &str = "dev-credentials.json";

pub async fn serve(config: &EngineConfig, with_worker: bool) -> Result<()> {
    crate::state_dir::prepare(&config.state_dir)?;
    let tokens_file = config.tokens_file();
    let tokens = Tokens::load(&tokens_file).with_context(|| {
        format!(
            "no API principals: create {} with `cogward tokens add`",
            tokens_file.display()
        )
    })?;
    let db = Db::connect(&config.database_url()).await?;
    let ledger = Ledger::start(db.clone());
    // The API's instance decides every gateway call: bindings are reused for a second.
    let policies = Arc::new(
        Policies::new(db.clone(), config.policy_limits())?
            .with_binding_cache(std::time::Duration::from_secs(1)),
    );
    policies.bootstrap(&ledger).await?;
    let temporal =
        temporal::TemporalHandle::connecting(config.temporal.clone(), config.namespace.clone());
    // Usually Temporal answers at once: start serving connected then.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), temporal.wait()).await;
    let mirror_wake = MirrorWake::default();
    let mirror = {
        let (temporal, ledger) = (temporal.clone(), ledger.clone());
        let (namespace, interval) = (config.namespace.clone(), config.mirror_interval());
        let wake = mirror_wake.clone();
        async move {
            Mirror {
                client: temporal.wait().await,
                ledger,
                namespace,
                interval,
                wake,
            }
            .run()
            .await
        }
    };
    tokio::spawn(mirror);
    let channels = Arc::new(crate::approvals::callbacks::Channels::load(
        &config.channels_config(),
    )?);
    let gateway_config = GatewayConfig::load(&config.gateway_config())?;
    let gateway = Arc::new(
        Gateway::new(
            db.clone(),
            ledger.clone(),
            policies.clone(),
            gateway_config,
            config.namespace.clone(),
            config.state_dir.join("spool"),
            Arc::new(crate::gateway::keys::KeyRing::open(config.gateway_keys())?),
            temporal.clone(),
            channels.group_rules.clone(),
        )
        .await?,
    );
    tokio::spawn(crate::gateway::close_servers_of_ended_runs(gateway.clone()));
    tokio::spawn(crate::gateway::spool::drain(gateway.clone()));
    tokio::spawn(crate::gateway::settle_abandoned_calls(gateway.clone()));
    if config.checkpoint_interval_s > 0 {
        let key = crate::audit::checkpoint::signing_key(&config.ledger_signing_key())?;
        tokio::spawn(crate::audit::checkpoint::on_schedule(
            db.clone(),
            key,
            config.checkpoint_file(),
            Duration::from_secs(config.checkpoint_interval_s),
        ));
    }
    if config.evidence_retention_days > 0 {
        tokio::spawn(sweep_evidence(
            cogward_activities::evidence::root(&config.state_dir),
            Duration::from_secs(config.evidence_retention_days * 86_400),
        ));
    }
    let egress_config = crate::egress::EgressConfig::load(&config.egress_config())?;
    let egress_listener = tokio::net::TcpListener::bind(config.egress_listen)
        .await
        .with_context(|| format!("binding the egress proxy on {}", config.egress_listen))?;
    tokio::spawn(
        Arc::new(crate::egress::proxy::EgressProxy::new(
            gateway.clone(),
            egress_config,
        ))
        .serve(egress_listener),
    );
    let state = AppState {
        temporal,
        db,
        ledger,
        tokens: Arc::new(tokens),
        mirror_wake,
        policies,
        namespace: config.namespace.clone(),
        state_dir: config.state_dir.clone(),
        channels,
    };
    let gateway_listener = tokio::net::TcpListener::bind(config.gateway_listen)
        .await
        .with_context(|| format!("binding the gateway on {}", config.gateway_listen))?;
    eprintln!("cogward: gateway on http://{}", config.gateway_listen);
    let gateway_server = crate::http_server::serve(
        gateway_listener,
        crate::gateway::app(gateway),
        shutdown_signal(),
    );
    let app = http::app(state);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(listen = %config.listen, "cogward API listening");
    eprintln!("cogward: API on http://{}", config.listen);
    let api_server = crate::http_server::serve(listener, app, shutdown_signal());
    let server = async move {
        let (api, gateway) = tokio::join!(api_server, gateway_server);
        api.and(gateway)
    };
    if with_worker {
        // The SDK's worker future is not Send: run it beside the server in this task.
        tokio::select! {
            r = server => r?,
            r = crate::worker::run(config) => r?,
        }
    } else {
        server.await?;
    }
    Ok(())
}

/// Delete evidence past its retention, at start and then hourly.
async fn sweep_evidence(root: PathBuf, retention: Duration) {
    loop {
        let r = root.clone();
        match tokio::task::spawn_blocking(move || {
            cogward_activities::evidence::sweep(&r, retention, std::time::SystemTime::now())
        })
        .await
        {
            Ok(Ok(swept)) if swept.runs > 0 || swept.blobs > 0 => {
                tracing::info!(
                    runs = swept.runs,
                    blobs = swept.blobs,
                    "evidence past its retention deleted"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping the evidence store"),
            Err(e) => tracing::warn!(error = %e, "sweeping the evidence store"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn random_token() -> String {
    format!(
        "cgw_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Write `text` to `path` readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Add a principal to the tokens file (created if missing) and return its new token.
pub fn add_principal(
    tokens_file: &Path,
    name: &str,
    roles: Vec<Role>,
    groups: Vec<String>,
    tenants: Vec<String>,
) -> Result<String> {
    anyhow::ensure!(
        !tenants.is_empty(),
        "a principal needs the tenants it may act on (--tenants acme,globex, or '*' for a platform operator)"
    );
    let mut file: TokensFile = match std::fs::read_to_string(tokens_file) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", tokens_file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokensFile::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", tokens_file.display())),
    };
    anyhow::ensure!(
        !file.principals.iter().any(|p| p.name == name),
        "principal {name:?} already exists in {}",
        tokens_file.display()
    );
    let token = random_token();
    file.principals.push(PrincipalEntry {
        name: name.to_string(),
        token_sha256: token_digest(&token),
        roles,
        groups,
        tenants,
    });
    write_private(tokens_file, &serde_json::to_string_pretty(&file)?)?;
    Ok(token)
}

/// Development principals: `ci` submits, reads, cancels and manages policies; `approver`
/// approves, and is in the `release-managers` and `security` approval groups.
fn ensure_dev_credentials(config: &EngineConfig) -> Result<()> {
    let creds = config.state_dir.join(DEV_CREDENTIALS);
    if creds.exists() {
        return Ok(());
    }
    let tokens_file = config.tokens_file();
    let mut out = BTreeMap::new();
    for (name, roles, groups) in [
        ("ci", vec![Role::Submit, Role::Read, Role::Operate], vec![]),
        (
            "approver",
            vec![Role::Approve, Role::Read],
            vec!["release-managers".to_string(), "security".to_string()],
        ),
    ] {
        out.insert(
            name,
            add_principal(&tokens_file, name, roles, groups, vec!["*".into()])?,
        );
    }
    write_private(&creds, &serde_json::to_string_pretty(&out)?)?;
    eprintln!("cogward: development tokens written to {}", creds.display());
    Ok(())
}

pub async fn dev(config: &EngineConfig) -> Result<()> {
    crate::state_dir::prepare(&config.state_dir)?;
    let addr = temporal::socket_addr(&config.temporal)?;
    let _server = if temporal::reachable(addr) {
        eprintln!("cogward: using the Temporal server at {addr}");
        None
    } else {
        eprintln!("cogward: starting a Temporal dev server on {addr}");
        Some(temporal::start_dev_server(
            addr,
            &config.state_dir.join("temporal"),
        )?)
    };
    ensure_dev_credentials(config)?;
    serve(config, true).await
}
