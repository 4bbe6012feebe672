//! The Temporal worker: polls cogward's task queue and runs workflows and activities.

use crate::config::EngineConfig;
use anyhow::{Context, Result};
use cogward_activities::{ActivitiesConfig, GatewayAccess, RunActivities};
use cogward_workflows::{AgentRun, Approval, TASK_QUEUE};
use std::sync::Arc;
use std::time::{Duration, Instant};
use temporalio_sdk::runtime::RuntimeOptions;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

pub fn activities_config(
    config: &EngineConfig,
    credentials: Arc<crate::gateway::RunCredentials>,
) -> Result<ActivitiesConfig> {
    let channels = crate::approvals::callbacks::Channels::load(&config.channels_config())?;
    Ok(ActivitiesConfig {
        state_dir: config.state_dir.clone(),
        runner_bin: config.runner_bin(),
        sandbox: config.sandbox_profile(),
        max_output_bytes: 16 * 1024 * 1024,
        max_file_bytes: config.sandbox_max_file_mb.saturating_mul(1 << 20),
        max_open_files: 1024,
        secrets_file: Some(config.secrets_file()),
        poll_interval: Duration::from_millis(25),
        gateway: Some(GatewayAccess {
            upstream: config.gateway_address(),
            credentials,
            egress_proxy: Some(config.egress_listen.to_string()),
        }),
        agent_clis: cogward_activities::agent_cli::AgentClis {
            dir: config.agents_dir.clone(),
        },
        repositories_dir: config.repositories_dir(),
        posters: channels.posters,
        group_rules: channels.group_rules,
    })
}

/// Run the worker until it stops cleanly. A worker that cannot reach Temporal (at start or
/// later) is restarted with backoff rather than taking the process (and, under `serve
/// --worker`, the API) down with it.
pub async fn run(config: &EngineConfig) -> Result<()> {
    let runtime = Runtime::from_current_tokio(RuntimeOptions::default())
        .context("starting the Temporal SDK runtime")?;
    let runner_bin = config.runner_bin();
    anyhow::ensure!(
        runner_bin.is_file(),
        "runner binary {} not found (set COGWARD_RUNNER_BIN)",
        runner_bin.display()
    );
    // Admission decisions need the policy store (the same database the API uses).
    let db = crate::db::Db::connect(&config.database_url()).await?;
    let credentials = Arc::new(crate::gateway::RunCredentials {
        db: db.clone(),
        keys: Arc::new(crate::gateway::keys::KeyRing::open(config.gateway_keys())?),
    });
    let policies = Arc::new(crate::policy::Policies::new(db, config.policy_limits())?);
    let activities = activities_config(config, credentials)?;
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match run_once(&runtime, config, &activities, policies.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(error = %format!("{e:#}"), ?backoff, "worker stopped; restarting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn run_once(
    runtime: &Runtime,
    config: &EngineConfig,
    activities: &ActivitiesConfig,
    policies: Arc<crate::policy::Policies>,
) -> Result<()> {
    let client = crate::temporal::connect(&config.temporal, &config.namespace).await?;
    let options = WorkerOptions::new(TASK_QUEUE)
        .register_workflow::<AgentRun>()
        .context("registering AgentRun")?
        .register_workflow::<Approval>()
        .context("registering Approval")?
        .register_activities(RunActivities::new(activities.clone(), policies))
        // A worker that dies leaves tasks on its sticky queue; hand them on quickly.
        .sticky_queue_schedule_to_start_timeout(Duration::from_secs(3))
        // Cancellation reaches an activity on a heartbeat response: keep that prompt.
        .max_heartbeat_throttle_interval(Duration::from_secs(1))
        .build();
    let mut worker = Worker::new(runtime, client, options).context("creating the worker")?;
    tracing::info!(task_queue = TASK_QUEUE, "worker started");
    worker.run().await.context("worker stopped")?;
    Ok(())
}
