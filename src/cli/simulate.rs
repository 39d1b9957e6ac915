//! `stickwarden simulate --rules DIR|--config FILE DUMP...`: who the rules would block, at which step and why,
//! over recorded dumps taken as successive polls. Contacts no HAProxy, writes no store.

use std::path::PathBuf;

use clap::Args;

use super::{Failure, EXIT_CONFIG};

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["rules", "config"]))]
pub struct SimulateArgs {
    /// The rules directory to try, every other setting at its default.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// A whole configuration instead: its rules, dry-run, allowlist, breaker and aggregation.
    #[arg(long, conflicts_with = "rules")]
    config: Option<PathBuf>,
    /// Time between two successive dumps.
    #[arg(long, default_value = "1s")]
    interval: String,
    /// Print JSON Lines, one decision per line.
    #[arg(long)]
    json: bool,
    /// Recorded `show table` dumps (HAProxy's text, or `stickwarden table NAME --json`), in order.
    #[arg(required = true)]
    dumps: Vec<PathBuf>,
}

pub fn run(a: SimulateArgs) -> Result<(), Failure> {
    let interval = crate::ops::parse_duration(&a.interval).map_err(Failure::usage)?;
    let cfg = match (&a.rules, &a.config) {
        (Some(dir), _) => {
            let rules = crate::rules::load_dir(dir).map_err(|e| Failure { code: EXIT_CONFIG, error: e.into() })?;
            crate::config::Config::offline(rules)
        }
        (None, Some(path)) => {
            crate::config::Config::load(path).map_err(|e| Failure { code: EXIT_CONFIG, error: e.into() })?
        }
        (None, None) => unreachable!("clap requires one of them"),
    };
    let decisions =
        crate::simulate::simulate_with(std::sync::Arc::new(cfg), &a.dumps, interval).map_err(Failure::usage)?;
    if a.json {
        for d in &decisions {
            say!("{}", serde_json::to_string(d).map_err(Failure::runtime)?)?;
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = decisions
        .iter()
        .map(|d| {
            vec![
                d.poll.to_string(),
                format!("+{}s", d.at_s),
                d.event.clone(),
                d.key.clone(),
                d.rule.clone(),
                d.level.to_string(),
                d.action.clone(),
                crate::time::human(std::time::Duration::from_secs(d.duration_s)),
                d.counters.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    super::print_table(&["POLL", "AT", "EVENT", "KEY", "RULE", "LEVEL", "ACTION", "DURATION", "COUNTERS"], &rows)?;
    let blocks = decisions.iter().filter(|d| d.event == "block").count();
    let dry = decisions.iter().filter(|d| d.event == "would_block").count();
    eprintln!("{} dump(s): {blocks} block(s), {dry} dry-run block(s)", a.dumps.len());
    Ok(())
}
