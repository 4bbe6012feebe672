//! The agent's environment and how its program is found: decided here, in plain data, so the
//! child after `clone` only has to hand prepared pointers to `execve`.

use std::collections::BTreeMap;

/// `PATH` unless the request sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// `LANG` unless the request sets its own.
pub const DEFAULT_LANG: &str = "C.UTF-8";
/// Variables only the runner sets; a request that sets them is refused rather than overridden,
/// so nobody believes they control them.
pub const RUNNER_OWNED_VARS: [&str; 3] = ["HOME", "COGWARD_RUN_ID", "COGWARD_SECRETS_DIR"];

/// The agent's whole environment: the request's `env` over the defaults, plus the runner-owned
/// variables. Nothing comes from the runner's own environment.
pub fn agent_env(
    request_env: &BTreeMap<String, String>,
    run_id: &str,
    home: &str,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
    env.insert("LANG".to_string(), DEFAULT_LANG.to_string());
    for (name, value) in request_env {
        env.insert(name.clone(), value.clone());
    }
    env.insert("HOME".to_string(), home.to_string());
    env.insert("COGWARD_RUN_ID".to_string(), run_id.to_string());
    env
}

/// `NAME=value` strings in a stable (sorted) order.
pub fn envp_strings(env: &BTreeMap<String, String>) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The paths `execve` is tried on, in order, like `execvp`: `program` itself if it contains a
/// `/` (relative to the agent's cwd), else each `PATH` entry joined with it (an empty entry
/// means the cwd, as POSIX says).
pub fn exec_candidates(program: &str, path_var: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    path_var
        .split(':')
        .map(|dir| {
            if dir.is_empty() {
                program.to_string()
            } else {
                format!("{}/{program}", dir.trim_end_matches('/'))
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_added_and_nothing_else() {
        let env = agent_env(&BTreeMap::new(), "run-7", "/runs/7/work");
        let expected: BTreeMap<String, String> = [
            ("COGWARD_RUN_ID", "run-7"),
            ("HOME", "/runs/7/work"),
            ("LANG", "C.UTF-8"),
            ("PATH", DEFAULT_PATH),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn request_env_overrides_defaults_but_not_runner_owned_vars() {
        let mut req = BTreeMap::new();
        req.insert("PATH".to_string(), "/opt/bin".to_string());
        req.insert("FOO".to_string(), "bar".to_string());
        // Validation refuses these; even if it did not, the runner's values win.
        req.insert("HOME".to_string(), "/root".to_string());
        let env = agent_env(&req, "r", "/w");
        assert_eq!(env["PATH"], "/opt/bin");
        assert_eq!(env["FOO"], "bar");
        assert_eq!(env["HOME"], "/w");
        assert_eq!(
            envp_strings(&env),
            vec![
                "COGWARD_RUN_ID=r",
                "FOO=bar",
                "HOME=/w",
                "LANG=C.UTF-8",
                "PATH=/opt/bin"
            ]
        );
    }

    #[test]
    fn programs_are_searched_on_path_like_execvp() {
        assert_eq!(
            exec_candidates("sh", "/usr/local/bin:/usr/bin/:"),
            vec!["/usr/local/bin/sh", "/usr/bin/sh", "sh"]
        );
        assert_eq!(exec_candidates("./run.sh", DEFAULT_PATH), vec!["./run.sh"]);
        assert_eq!(
            exec_candidates("/bin/true", DEFAULT_PATH),
            vec!["/bin/true"]
        );
    }
}
