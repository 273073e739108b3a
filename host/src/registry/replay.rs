//! Shadow runs: a candidate version answers the last N real inputs of its plugin (from the call
//! log) next to the active version, and the report says where their decisions differ — before
//! anyone activates it. Neither run is logged or counted by the crash-loop breaker, and payment
//! steps are never logged, so nothing here can move money.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use crate::db::Db;
use crate::hooks::{InvokeError, invoke};
use crate::plugin::Plugin;

/// Differences listed in full in a report; the rest are counted.
pub const LISTED_DIFFERENCES: usize = 20;

/// What one side answered.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "ReplayAnswer")]
pub enum Answer {
    /// The decision (for pricing: the plugin's operations and the cart they price, as
    /// `{"output": …, "priced": …}`; a logged output is the decision alone).
    Output(Value),
    /// The named error.
    Error {
        /// Its code.
        code: String,
        /// What happened.
        message: String,
    },
}

/// One input where the candidate answered differently.
// Fields of this and the report in alphabetical order: the order the admin API writes them in.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "ReplayDifference")]
pub struct Difference {
    /// When the real call happened (Unix ms).
    pub at: i64,
    /// What the baseline answered.
    pub baseline: Answer,
    /// The call log entry.
    pub call_id: i64,
    /// What the candidate answered.
    pub candidate: Answer,
    /// The input.
    pub input: Value,
}

/// The outcome of a shadow run.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ReplayReport {
    /// What it was compared with: `name@version` of the active version re-run on each input,
    /// or `"logged outputs"` when the plugin has no active version here.
    pub baseline: String,
    /// `name@version` of the candidate.
    pub candidate: String,
    /// Inputs the candidate failed on.
    pub candidate_errors: usize,
    /// Inputs replayed.
    pub compared: usize,
    /// Inputs where they differ (including one failing and the other not).
    pub differed: usize,
    /// The first differences, in full.
    pub differences: Vec<Difference>,
    /// Inputs where both answered the same.
    pub identical: usize,
    /// Logged inputs that are no longer valid inputs of the hook (left out of the comparison).
    pub skipped: usize,
}

async fn answer(plugin: &Plugin, input: Value) -> Answer {
    match invoke(plugin, input).await {
        Ok(invocation) => Answer::Output(match invocation.priced {
            Some(priced) => {
                let mut priced = serde_json::to_value(priced).unwrap_or_default();
                // Which version proposed a discount differs by construction; what it does
                // to the cart is the comparison.
                for list in ["applied", "dropped"] {
                    if let Some(entries) = priced.get_mut(list).and_then(Value::as_array_mut) {
                        for entry in entries.iter_mut().filter_map(Value::as_object_mut) {
                            entry.remove("plugin");
                        }
                    }
                }
                serde_json::json!({"output": invocation.output, "priced": priced})
            }
            None => invocation.output,
        }),
        Err(InvokeError::Hook(e)) => Answer::Error {
            code: e.code().to_owned(),
            message: e.kind.to_string(),
        },
        Err(e) => Answer::Error {
            code: "bad_input".to_owned(),
            message: e.to_string(),
        },
    }
}

/// Replays the last `last` logged inputs of `candidate`'s plugin on `candidate` and on
/// `active` (or, without one, compares with the logged outputs).
pub async fn replay(
    db: &Db,
    candidate: &Plugin,
    active: Option<&Plugin>,
    last: u32,
) -> Result<ReplayReport, sqlx::Error> {
    let name = &candidate.manifest().name;
    let rows = sqlx::query(
        "SELECT id, at, input, output, error FROM plugin_calls \
         WHERE plugin_name = $1 AND hook = $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(name)
    .bind(candidate.hook().as_str())
    .bind(i64::from(last.clamp(1, 10_000)))
    .fetch_all(db.pool())
    .await?;
    let mut report = ReplayReport {
        candidate: candidate.manifest().id(),
        baseline: active.map_or_else(|| "logged outputs".to_owned(), |a| a.manifest().id()),
        compared: 0,
        skipped: 0,
        identical: 0,
        differed: 0,
        candidate_errors: 0,
        differences: Vec::new(),
    };
    for row in rows.iter().rev() {
        let Ok(input) = serde_json::from_str::<Value>(&row.try_get::<String, _>("input")?) else {
            continue;
        };
        let baseline = match active {
            Some(active) => answer(active, input.clone()).await,
            None => logged(
                row.try_get::<Option<String>, _>("output")?,
                row.try_get::<Option<String>, _>("error")?,
            ),
        };
        let candidate_answer = answer(candidate, input.clone()).await;
        let unusable = |a: &Answer| matches!(a, Answer::Error { code, .. } if code == "bad_input");
        if unusable(&candidate_answer) && (unusable(&baseline) || active.is_none()) {
            report.skipped += 1;
            continue;
        }
        report.compared += 1;
        if matches!(candidate_answer, Answer::Error { .. }) {
            report.candidate_errors += 1;
        }
        if same(&baseline, &candidate_answer, active.is_some()) {
            report.identical += 1;
            continue;
        }
        report.differed += 1;
        if report.differences.len() < LISTED_DIFFERENCES {
            report.differences.push(Difference {
                call_id: row.try_get("id")?,
                at: row.try_get("at")?,
                input,
                baseline,
                candidate: candidate_answer,
            });
        }
    }
    Ok(report)
}

/// Logged outputs hold the plugin's raw decision only (no priced cart).
fn logged(output: Option<String>, error: Option<String>) -> Answer {
    match (output, error) {
        (Some(output), _) => Answer::Output(serde_json::from_str(&output).unwrap_or(Value::Null)),
        (None, error) => {
            let error = error.unwrap_or_default();
            let (code, message) = error.split_once(": ").unwrap_or((&error, ""));
            Answer::Error {
                code: code.to_owned(),
                message: message.to_owned(),
            }
        }
    }
}

/// Whether two answers are the same decision. Errors match on their code (messages carry
/// timings); against logged outputs only the raw decision is compared.
fn same(baseline: &Answer, candidate: &Answer, rerun: bool) -> bool {
    match (baseline, candidate) {
        (Answer::Error { code: a, .. }, Answer::Error { code: b, .. }) => a == b,
        (Answer::Output(a), Answer::Output(b)) if rerun => a == b,
        (Answer::Output(a), Answer::Output(b)) => b.get("output").unwrap_or(b) == a,
        _ => false,
    }
}
