//! Failpoints for fault-injection tests: named places in the pipeline where a test can kill the
//! worker or stall one job, set through `RFO_FAILPOINTS` when the worker starts.
//!
//! Test-only. Production deployments leave `RFO_FAILPOINTS` unset, and then each failpoint
//! costs one atomic load. The value is a `;`-separated list of `POINT=ACTION` rules:
//!
//! - `POINT` is `download` (before a job's input is read), `after-upload` (the job's overlay
//!   and preview are written, its row is not) or `after-insert` (a batch is recorded in the
//!   database, its offsets are not committed).
//! - `ACTION` is `kill`, which sends SIGKILL to the worker itself, or `sleep(MS)`, which stalls
//!   the job (or the batch) for MS milliseconds. `@N` after the action fires it on the Nth hit
//!   of the point only, counted from 1. Without `@N`, `kill` fires on the first hit and
//!   `sleep` on every hit.
//!
//! Example: `RFO_FAILPOINTS='after-upload=kill@40;download=sleep(15000)@3'`. Each rule logs
//! `failpoint fired` with the point and the hit number before it acts, so a test can prove
//! where a kill struck.

use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Environment variable that contains the rules.
pub const ENV: &str = "RFO_FAILPOINTS";

/// A place in the pipeline where a rule can act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Download,
    AfterUpload,
    AfterInsert,
}

impl Point {
    const ALL: [Point; 3] = [Point::Download, Point::AfterUpload, Point::AfterInsert];

    pub fn name(self) -> &'static str {
        match self {
            Point::Download => "download",
            Point::AfterUpload => "after-upload",
            Point::AfterInsert => "after-insert",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill,
    Sleep(Duration),
}

#[derive(Debug)]
struct Rule {
    point: Point,
    action: Action,
    /// The hit that fires the rule; `None` fires it on every hit.
    on_hit: Option<u64>,
    hits: AtomicU64,
}

static RULES: OnceLock<Vec<Rule>> = OnceLock::new();

/// Reads `RFO_FAILPOINTS` once, at start. An invalid value is an error that names the rule.
pub fn init_from_env() -> anyhow::Result<()> {
    let rules = match std::env::var(ENV) {
        Ok(value) => parse(&value)?,
        Err(_) => Vec::new(),
    };
    if !rules.is_empty() {
        tracing::warn!(
            rules = %std::env::var(ENV).unwrap_or_default(),
            "failpoints are set; they are for fault-injection tests only"
        );
    }
    let _ = RULES.set(rules);
    Ok(())
}

/// Counts a hit of `point` and carries out the rule that fires on it, if any. `job_id` names
/// the job at the point in the log line of a rule that fires.
pub async fn hit(point: Point, job_id: Option<uuid::Uuid>) {
    let Some(rules) = RULES.get() else {
        return;
    };
    for rule in rules.iter().filter(|r| r.point == point) {
        let hit = rule.hits.fetch_add(1, Ordering::Relaxed) + 1;
        if rule.on_hit.is_some_and(|n| n != hit) {
            continue;
        }
        match rule.action {
            Action::Kill => {
                tracing::error!(
                    point = point.name(),
                    hit,
                    job_id = job_id.map(tracing::field::display),
                    "failpoint fired; killing the worker with SIGKILL"
                );
                // SAFETY: kill(2) on the process's own id has no memory-safety preconditions.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                std::future::pending::<()>().await;
            }
            Action::Sleep(duration) => {
                tracing::warn!(
                    point = point.name(),
                    hit,
                    job_id = job_id.map(tracing::field::display),
                    sleep_ms = duration.as_millis() as u64,
                    "failpoint fired; stalling"
                );
                tokio::time::sleep(duration).await;
            }
        }
    }
}

fn parse(value: &str) -> anyhow::Result<Vec<Rule>> {
    value
        .split(';')
        .map(str::trim)
        .filter(|rule| !rule.is_empty())
        .map(|rule| {
            rule.parse().map_err(|reason| {
                anyhow::anyhow!(
                    "invalid {ENV} rule {rule:?}: {reason}; expected POINT=ACTION[@N] with POINT one of download, after-upload, after-insert and ACTION kill or sleep(MS)"
                )
            })
        })
        .collect()
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(rule: &str) -> Result<Rule, String> {
        let (name, action) = rule
            .split_once('=')
            .ok_or_else(|| "missing '='".to_owned())?;
        let point = Point::ALL
            .into_iter()
            .find(|p| p.name() == name.trim())
            .ok_or_else(|| format!("unknown point {:?}", name.trim()))?;
        let (action, on_hit) = match action.trim().split_once('@') {
            Some((action, n)) => {
                let n: u64 =
                    n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        format!("the hit number {n:?} is not a whole number >= 1")
                    })?;
                (action, Some(n))
            }
            None => (action.trim(), None),
        };
        let action = if action == "kill" {
            Action::Kill
        } else if let Some(ms) = action
            .strip_prefix("sleep(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            let ms: u64 = ms
                .parse()
                .map_err(|_| format!("the sleep {ms:?} is not a number of milliseconds"))?;
            Action::Sleep(Duration::from_millis(ms))
        } else {
            return Err(format!("unknown action {action:?}"));
        };
        let on_hit = match (action, on_hit) {
            (Action::Kill, None) => Some(1),
            (_, on_hit) => on_hit,
        };
        Ok(Rule {
            point,
            action,
            on_hit,
            hits: AtomicU64::new(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let rules =
            parse("after-upload=kill@40; download=sleep(15000)@3;after-insert=kill").unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].point, Point::AfterUpload);
        assert_eq!(rules[0].action, Action::Kill);
        assert_eq!(rules[0].on_hit, Some(40));
        assert_eq!(rules[1].action, Action::Sleep(Duration::from_secs(15)));
        assert_eq!(rules[1].on_hit, Some(3));
        assert_eq!(rules[2].on_hit, Some(1), "kill without @N fires once");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn invalid_rules_rejected() {
        for bad in [
            "upload=kill",
            "download",
            "download=explode",
            "download=kill@0",
            "download=sleep(x)",
        ] {
            let error = parse(bad).expect_err(bad).to_string();
            assert!(error.contains(ENV), "{bad}: {error}");
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }
}
