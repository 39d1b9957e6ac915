//! `stickwarden table --haproxy ADDR [NAME] [--where 'data.X op N']... [--key K] [--json]`:
//! lists the tables, or streams one table's entries as they arrive, filtered on HAProxy's side.

use std::io::Write;

use anyhow::Context;
use clap::Args;

use super::Failure;
use crate::client::{Client, ClientOptions, TableItem};
use crate::output::{DumpPrinter, Format};
use crate::proto::command::MAX_FILTERS;
use crate::proto::table::TableHeader;
use crate::proto::{Filter, TableKey, TableSelect};
use crate::target::Target;

#[derive(Debug, Args)]
pub struct TableArgs {
    /// Runtime API address: unix:/path, tcp:host:port, or a socket path.
    #[arg(long, env = "STICKWARDEN_HAPROXY", value_name = "ADDR")]
    haproxy: String,
    /// The table to dump; all tables are listed when omitted.
    name: Option<String>,
    /// Server-side filter 'data.<type> <op> <integer>' (op: eq ne le ge lt gt); up to 4, all must hold.
    #[arg(long = "where", value_name = "FILTER", requires = "name")]
    filters: Vec<String>,
    /// Show only the entry of this key (validated against the table's key type).
    #[arg(long, value_name = "KEY", requires = "name", conflicts_with = "filters")]
    key: Option<String>,
    /// JSON Lines output, one object per table or entry.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: TableArgs) -> Result<(), Failure> {
    let target: Target = a.haproxy.parse().map_err(Failure::usage)?;
    let filters =
        a.filters.iter().map(|f| f.parse::<Filter>()).collect::<Result<Vec<_>, _>>().map_err(Failure::usage)?;
    if filters.len() > MAX_FILTERS {
        return Err(Failure::usage(anyhow::anyhow!(
            "at most {MAX_FILTERS} --where filters (HAProxy's limit), got {}",
            filters.len()
        )));
    }
    let format = if a.json { Format::Json } else { Format::Human };
    let client = Client::connect(target.clone(), ClientOptions::default())
        .await
        .with_context(|| format!("cannot reach HAProxy at {target}"))
        .map_err(Failure::runtime)?;
    let stdout = std::io::stdout().lock();
    let mut printer = DumpPrinter::new(stdout, format);

    let Some(name) = a.name else {
        for t in client.list_tables().await? {
            let h = TableHeader { name: &t.name, key_type: &t.key_type, size: t.size, used: t.used };
            printer.item(TableItem::Header(h), false);
        }
        return finish(printer);
    };
    let select = match (a.key, filters.is_empty()) {
        (Some(k), _) => {
            let ty = client.table_key_type(&name).await?;
            TableSelect::Key(TableKey::parse(ty, &k).map_err(Failure::usage)?)
        }
        (None, true) => TableSelect::All,
        (None, false) => TableSelect::Filters(filters),
    };
    let stats = client.show_table(&name, select).await?.for_each(|item| printer.item(item, true)).await?;
    finish(printer)?;
    if stats.invalid > 0 {
        eprintln!("stickwarden: warning: {} line(s) of the dump could not be parsed and were skipped", stats.invalid);
    }
    if format == Format::Human {
        eprintln!("# {} entr{} of {name}", stats.entries, if stats.entries == 1 { "y" } else { "ies" });
    }
    Ok(())
}

fn finish<W: Write>(printer: DumpPrinter<W>) -> Result<(), Failure> {
    // `stickwarden table ... | head` is normal use, not a failure: Failure::output says so.
    printer.finish().map(drop).map_err(Failure::output)
}
