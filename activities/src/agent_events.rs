//! Run events: what an agent CLI did, normalised from its own output (Claude Code's
//! `stream-json`, Codex CLI's `exec --json` JSONL) into one typed stream a reviewer, a pipeline
//! or `cogward run events` can read without knowing either CLI.
//!
//! The normaliser is fed the agent's stdout line by line ([`Normaliser::push`]); it keeps only
//! what it needs to pair a tool's call with its result. A line that is not an event of the CLI
//! (a plain `command` runtime's output, a CLI's stray text) is not an event: the raw output is
//! still in `stdout.log`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Longest text an event carries (a tool's output, a message); the rest is cut, and
/// `truncated` says so. The whole output is in `stdout.log`.
pub const MAX_EVENT_TEXT: usize = 4096;

/// One thing an agent did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The CLI is up: its session, model, and the tools and MCP servers it was offered.
    Started {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tools: Vec<String>,
    },
    /// A model turn (one model call), with the usage the CLI reports for it. The gateway's
    /// ledger holds the exact usage it charged.
    ModelTurn {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        input_tokens: u64,
        output_tokens: u64,
    },
    /// Text the agent wrote to its user.
    Message { text: String, truncated: bool },
    /// The agent called a tool (built in, or an MCP tool through the gateway).
    ToolCall {
        id: String,
        tool: String,
        input: Value,
    },
    /// A tool's result; `is_error` when the tool failed or was refused (a refusal by the
    /// gateway's policy says so in `output`, and in the ledger).
    ToolResult {
        id: String,
        tool: String,
        is_error: bool,
        output: String,
        truncated: bool,
    },
    /// A file the agent created, edited or deleted (`path` relative to its work directory).
    FileChange { path: String, kind: String },
    /// A shell command the agent ran.
    Command {
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i64>,
        output: String,
        truncated: bool,
    },
    /// An error the CLI reported.
    Error { message: String },
    /// The CLI's own summary at its end.
    Finished {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turns: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
        /// Tool uses the CLI's own permission rules refused.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        permission_denials: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
    },
}

/// Which CLI's output a normaliser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Claude Code `--output-format stream-json --verbose`.
    ClaudeStreamJson,
    /// Codex CLI `exec --json`.
    CodexJsonl,
}

impl OutputFormat {
    /// The format of a runtime's stdout, if it is an agent CLI's.
    pub fn of(runtime: &cogward_protocol::spec::RuntimeSpec) -> Option<Self> {
        match runtime {
            cogward_protocol::spec::RuntimeSpec::Command(_) => None,
            cogward_protocol::spec::RuntimeSpec::ClaudeCode(_) => {
                Some(OutputFormat::ClaudeStreamJson)
            }
            cogward_protocol::spec::RuntimeSpec::Codex(_) => Some(OutputFormat::CodexJsonl),
        }
    }
}

/// Turns a CLI's output lines into [`AgentEvent`]s.
#[derive(Debug)]
pub struct Normaliser {
    format: OutputFormat,
    /// Claude Code: tool uses awaiting their result (id → name, input).
    pending: BTreeMap<String, (String, Value)>,
    /// Claude Code: assistant messages already counted as a turn (it prints one line per
    /// content block, each with the message's id).
    turns: BTreeSet<String>,
}

/// `text`, cut to [`MAX_EVENT_TEXT`] bytes at a character boundary; whether it was cut.
fn cut(text: &str) -> (String, bool) {
    if text.len() <= MAX_EVENT_TEXT {
        return (text.to_string(), false);
    }
    (
        text[..text.floor_char_boundary(MAX_EVENT_TEXT)].to_string(),
        true,
    )
}

/// A path inside the sandbox as the reviewer reads it: relative to the work directory.
fn work_relative(path: &str) -> String {
    path.strip_prefix(crate::agent_cli::WORK)
        .map(|p| p.trim_start_matches('/'))
        .filter(|p| !p.is_empty())
        .unwrap_or(path)
        .to_string()
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

impl Normaliser {
    pub fn new(format: OutputFormat) -> Self {
        Self {
            format,
            pending: BTreeMap::new(),
            turns: BTreeSet::new(),
        }
    }

    /// The events one line of output stands for (none for a line that is not a CLI event).
    pub fn push(&mut self, line: &str) -> Vec<AgentEvent> {
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            return Vec::new();
        };
        match self.format {
            OutputFormat::ClaudeStreamJson => self.claude(&v),
            OutputFormat::CodexJsonl => codex(&v),
        }
    }

    /// Every event of a whole output.
    pub fn all(format: OutputFormat, output: &str) -> Vec<AgentEvent> {
        let mut n = Normaliser::new(format);
        output.lines().flat_map(|l| n.push(l)).collect()
    }

    fn claude(&mut self, v: &Value) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        match (v["type"].as_str(), v["subtype"].as_str()) {
            (Some("system"), Some("init")) => out.push(AgentEvent::Started {
                session: v["session_id"].as_str().map(str::to_string),
                model: v["model"].as_str().map(str::to_string),
                tools: v["tools"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|t| t.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            (Some("assistant"), _) => {
                let m = &v["message"];
                if let Some(id) = m["id"].as_str()
                    && self.turns.insert(id.to_string())
                {
                    out.push(AgentEvent::ModelTurn {
                        model: m["model"].as_str().map(str::to_string),
                        input_tokens: u64_at(&m["usage"], "input_tokens"),
                        output_tokens: u64_at(&m["usage"], "output_tokens"),
                    });
                }
                for block in m["content"].as_array().into_iter().flatten() {
                    match block["type"].as_str() {
                        Some("text") => {
                            let (text, truncated) = cut(block["text"].as_str().unwrap_or(""));
                            if !text.trim().is_empty() {
                                out.push(AgentEvent::Message { text, truncated });
                            }
                        }
                        Some("tool_use") => {
                            let id = block["id"].as_str().unwrap_or_default().to_string();
                            let tool = block["name"].as_str().unwrap_or_default().to_string();
                            let input = block["input"].clone();
                            self.pending
                                .insert(id.clone(), (tool.clone(), input.clone()));
                            out.push(AgentEvent::ToolCall { id, tool, input });
                        }
                        _ => {}
                    }
                }
            }
            (Some("user"), _) => {
                for block in v["message"]["content"].as_array().into_iter().flatten() {
                    if block["type"] != "tool_result" {
                        continue;
                    }
                    let id = block["tool_use_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let (tool, input) = self.pending.remove(&id).unwrap_or_default();
                    let is_error = block["is_error"].as_bool().unwrap_or(false);
                    let (output, truncated) = cut(&text_of(&block["content"]));
                    out.extend(claude_effect(&tool, &input, is_error, &output, truncated));
                    out.push(AgentEvent::ToolResult {
                        id,
                        tool,
                        is_error,
                        output,
                        truncated,
                    });
                }
            }
            (Some("result"), subtype) => {
                let ok = subtype == Some("success") && !v["is_error"].as_bool().unwrap_or(false);
                if !ok && let Some(e) = v["errors"].as_array().and_then(|e| e.first()) {
                    out.push(AgentEvent::Error {
                        message: text_of(e),
                    });
                }
                out.push(AgentEvent::Finished {
                    ok,
                    turns: v["num_turns"].as_u64(),
                    cost_usd: v["total_cost_usd"].as_f64(),
                    permission_denials: v["permission_denials"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|d| d["tool_name"].as_str().map(str::to_string))
                        .collect(),
                    result: v["result"].as_str().map(|r| cut(r).0),
                });
            }
            _ => {}
        }
        out
    }
}

/// What a completed Claude Code built-in tool did to the work directory or the shell.
fn claude_effect(
    tool: &str,
    input: &Value,
    is_error: bool,
    output: &str,
    truncated: bool,
) -> Option<AgentEvent> {
    if is_error {
        return match tool {
            "Bash" => Some(AgentEvent::Command {
                command: input["command"].as_str().unwrap_or_default().to_string(),
                exit_code: None,
                output: output.to_string(),
                truncated,
            }),
            _ => None,
        };
    }
    let path = |key: &str| work_relative(input[key].as_str().unwrap_or_default());
    match tool {
        "Write" => Some(AgentEvent::FileChange {
            path: path("file_path"),
            kind: "write".into(),
        }),
        "Edit" | "MultiEdit" => Some(AgentEvent::FileChange {
            path: path("file_path"),
            kind: "edit".into(),
        }),
        "NotebookEdit" => Some(AgentEvent::FileChange {
            path: path("notebook_path"),
            kind: "edit".into(),
        }),
        "Bash" => Some(AgentEvent::Command {
            command: input["command"].as_str().unwrap_or_default().to_string(),
            exit_code: Some(0),
            output: output.to_string(),
            truncated,
        }),
        _ => None,
    }
}

fn codex(v: &Value) -> Vec<AgentEvent> {
    let item = &v["item"];
    match (v["type"].as_str(), item["type"].as_str()) {
        (Some("thread.started"), _) => vec![AgentEvent::Started {
            session: v["thread_id"].as_str().map(str::to_string),
            model: None,
            tools: Vec::new(),
        }],
        (Some("turn.completed"), _) => vec![AgentEvent::ModelTurn {
            model: None,
            input_tokens: u64_at(&v["usage"], "input_tokens"),
            output_tokens: u64_at(&v["usage"], "output_tokens"),
        }],
        (Some("turn.failed"), _) | (Some("error"), _) => vec![AgentEvent::Error {
            message: v["error"]["message"]
                .as_str()
                .or(v["message"].as_str())
                .unwrap_or("the CLI reported an error")
                .to_string(),
        }],
        // An MCP call is shown as it starts: it may wait for a human's approval.
        (Some("item.started"), Some("mcp_tool_call")) => vec![AgentEvent::ToolCall {
            id: item["id"].as_str().unwrap_or_default().to_string(),
            tool: format!(
                "mcp__{}__{}",
                item["server"].as_str().unwrap_or_default(),
                item["tool"].as_str().unwrap_or_default()
            ),
            input: item["arguments"].clone(),
        }],
        (Some("item.completed"), Some(kind)) => codex_item(kind, item),
        _ => Vec::new(),
    }
}

fn codex_item(kind: &str, item: &Value) -> Vec<AgentEvent> {
    match kind {
        "agent_message" => {
            let (text, truncated) = cut(item["text"].as_str().unwrap_or_default());
            vec![AgentEvent::Message { text, truncated }]
        }
        "command_execution" => {
            let (output, truncated) = cut(item["aggregated_output"].as_str().unwrap_or_default());
            vec![AgentEvent::Command {
                command: item["command"].as_str().unwrap_or_default().to_string(),
                exit_code: item["exit_code"].as_i64(),
                output,
                truncated,
            }]
        }
        "file_change" => item["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| AgentEvent::FileChange {
                path: work_relative(c["path"].as_str().unwrap_or_default()),
                kind: c["kind"].as_str().unwrap_or("update").to_string(),
            })
            .collect(),
        "mcp_tool_call" => {
            let error = &item["error"];
            let result = &item["result"];
            let is_error = !error.is_null()
                || result["isError"].as_bool().unwrap_or(false)
                || item["status"] == "failed";
            let text = if error.is_null() {
                text_of(&result["content"])
            } else {
                error["message"]
                    .as_str()
                    .map_or_else(|| error.to_string(), str::to_string)
            };
            let (output, truncated) = cut(&text);
            vec![AgentEvent::ToolResult {
                id: item["id"].as_str().unwrap_or_default().to_string(),
                tool: format!(
                    "mcp__{}__{}",
                    item["server"].as_str().unwrap_or_default(),
                    item["tool"].as_str().unwrap_or_default()
                ),
                is_error,
                output,
                truncated,
            }]
        }
        "error" => vec![AgentEvent::Error {
            message: item["message"].as_str().unwrap_or_default().to_string(),
        }],
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn claude_code_output_becomes_turns_tool_calls_file_changes_and_commands() {
        let out = [
            r#"{"type":"system","subtype":"init","session_id":"s1","model":"m","tools":["Bash","Write","mcp__cogward__everything_echo"]}"#,
            r#"{"type":"assistant","message":{"id":"msg_1","model":"m","content":[{"type":"text","text":"Writing."}],"usage":{"input_tokens":100,"output_tokens":3}}}"#,
            r#"{"type":"assistant","message":{"id":"msg_1","model":"m","content":[{"type":"tool_use","id":"t1","name":"Write","input":{"file_path":"/work/src/a.rs","content":"x"}}],"usage":{"input_tokens":100,"output_tokens":3}}}"#,
            r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"t1","type":"tool_result","content":"File created"}]}}"#,
            r#"{"type":"assistant","message":{"id":"msg_2","model":"m","content":[{"type":"tool_use","id":"t2","name":"Bash","input":{"command":"ls"}}],"usage":{"input_tokens":120,"output_tokens":5}}}"#,
            r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"t2","type":"tool_result","content":"a.rs","is_error":false}]}}"#,
            r#"{"type":"assistant","message":{"id":"msg_3","model":"m","content":[{"type":"tool_use","id":"t3","name":"mcp__cogward__everything_echo","input":{"message":"hi"}}],"usage":{"input_tokens":130,"output_tokens":5}}}"#,
            r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"t3","type":"tool_result","content":[{"type":"text","text":"cogward: call denied"}],"is_error":true}]}}"#,
            "not json at all",
            r#"{"type":"result","subtype":"success","is_error":false,"num_turns":3,"total_cost_usd":0.5,"result":"done","permission_denials":[{"tool_name":"WebFetch"}]}"#,
        ]
        .join("\n");
        let events = Normaliser::all(OutputFormat::ClaudeStreamJson, &out);
        let kinds: Vec<String> = events
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "started",
                "model_turn",
                "message",
                "tool_call",
                "file_change",
                "tool_result",
                "model_turn",
                "tool_call",
                "command",
                "tool_result",
                "model_turn",
                "tool_call",
                "tool_result",
                "finished"
            ]
        );
        assert!(events.contains(&AgentEvent::FileChange {
            path: "src/a.rs".into(),
            kind: "write".into()
        }));
        assert!(events.iter().any(|e| matches!(e,
            AgentEvent::ToolResult { tool, is_error: true, output, .. }
                if tool == "mcp__cogward__everything_echo" && output.contains("denied"))));
        assert!(events.iter().any(|e| matches!(e,
            AgentEvent::Finished { ok: true, turns: Some(3), permission_denials, .. }
                if permission_denials == &["WebFetch"])));
    }

    #[test]
    fn codex_output_becomes_the_same_events() {
        let out = [
            r#"{"type":"thread.started","thread_id":"th"}"#,
            r#"{"type":"turn.started"}"#,
            r#"{"type":"item.completed","item":{"id":"i0","type":"file_change","changes":[{"path":"/work/hello.txt","kind":"add"}],"status":"completed"}}"#,
            r#"{"type":"item.completed","item":{"id":"i1","type":"command_execution","command":"bash -lc ls","aggregated_output":"hello.txt\n","exit_code":0,"status":"completed"}}"#,
            r#"{"type":"item.started","item":{"id":"i2","type":"mcp_tool_call","server":"cogward","tool":"everything_echo","arguments":{"message":"hi"},"status":"in_progress"}}"#,
            r#"{"type":"item.completed","item":{"id":"i2","type":"mcp_tool_call","server":"cogward","tool":"everything_echo","arguments":{"message":"hi"},"result":{"content":[{"type":"text","text":"Echo: hi"}]},"error":null,"status":"completed"}}"#,
            r#"{"type":"item.completed","item":{"id":"i3","type":"agent_message","text":"done"}}"#,
            r#"{"type":"turn.completed","usage":{"input_tokens":600,"output_tokens":40}}"#,
        ]
        .join("\n");
        let events = Normaliser::all(OutputFormat::CodexJsonl, &out);
        assert_eq!(events.len(), 7, "{events:?}");
        assert_eq!(
            events[1],
            AgentEvent::FileChange {
                path: "hello.txt".into(),
                kind: "add".into()
            }
        );
        assert!(matches!(
            &events[2],
            AgentEvent::Command {
                exit_code: Some(0),
                ..
            }
        ));
        assert!(
            matches!(&events[4], AgentEvent::ToolResult { is_error: false, output, .. } if output == "Echo: hi")
        );
        assert_eq!(
            events[6],
            AgentEvent::ModelTurn {
                model: None,
                input_tokens: 600,
                output_tokens: 40
            }
        );
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_EVENT_TEXT);
        let (text, truncated) = cut(&long);
        assert!(truncated && text.len() <= MAX_EVENT_TEXT && text.chars().all(|c| c == 'é'));
    }
}
