//! Every recorded history (`tests/histories/*.json`, some written by earlier builds) replays on
//! this build's workflows without a nondeterminism error: a worker of this build resumes the
//! workflows an earlier one left open, and `cogward audit replay` checks old ledgers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cogward_workflows::{AgentRun, Approval};
use temporalio_common::protos::temporal::api::history::v1::History;
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};

#[tokio::test]
async fn recorded_histories_replay_on_this_build() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/histories");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    assert!(names.len() >= 5, "recorded histories in {dir}: {names:?}");
    for path in names {
        let history: History =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("a recorded history");
        let options = WorkflowReplayerOptions::new()
            .register_workflow::<AgentRun>()
            .unwrap()
            .register_workflow::<Approval>()
            .unwrap()
            .build();
        WorkflowReplayer::new(options)
            .unwrap()
            .replay_workflow(history.into())
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
}
