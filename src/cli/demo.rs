//! `stickwarden demo`: everything local, nothing to configure. A sandbox HAProxy on loopback, one
//! abusive client (127.0.0.2) and one normal client (127.0.0.3) sending real HTTP, a server-side
//! filtered `show table` that finds the abuser, a tag set with `set table` that makes HAProxy
//! answer 403, and the release. Until the rules engine exists the decision here is a fixed
//! threshold; every HAProxy interaction is the real client against the real process.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::Failure;
use crate::client::{Client, ClientOptions, TableItem};
use crate::output::{DumpPrinter, Format};
use crate::proto::{DataField, Filter, KeyType, TableKey, TableSelect};
use crate::sandbox::{self, Sandbox, SandboxOptions};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Requests the abusive client sends.
    #[arg(long, default_value_t = 300)]
    flood: usize,
    /// Request rate over 10 s above which a client counts as abusive.
    #[arg(long, default_value_t = 100)]
    threshold: i64,
    /// Keep HAProxy running afterwards until Ctrl-C, to query it by hand (default: when on a terminal).
    #[arg(long)]
    hold: Option<bool>,
}

pub async fn run(a: DemoArgs) -> Result<(), Failure> {
    let sb = Sandbox::start(&SandboxOptions::default())
        .context("cannot start the sandbox HAProxy")
        .map_err(Failure::runtime)?;
    println!("== sandbox HAProxy {} (pid {}) on 127.0.0.1:{}", sb.version, sb.pid(), sb.web_port);
    println!("   Runtime API: {}", sb.admin());
    let target = sb.admin().parse().map_err(Failure::runtime)?;
    let client = Client::connect(target, ClientOptions::default()).await?;
    let (abuser, normal) = (sandbox::client_addr(1), sandbox::client_addr(2));

    println!("\n== traffic: {abuser} floods with {} requests, {normal} sends 5", a.flood);
    let flood = sandbox::http_burst(abuser, sb.web_port, a.flood, 20).await.map_err(Failure::runtime)?;
    let calm = sandbox::http_burst(normal, sb.web_port, 5, 1).await.map_err(Failure::runtime)?;
    println!("   {abuser}: {}", statuses(&flood));
    println!("   {normal}: {}", statuses(&calm));

    println!("\n== stickwarden table ft_web");
    print_table(&client, TableSelect::All).await?;

    let filter: Filter = format!("data.http_req_rate gt {}", a.threshold).parse().map_err(Failure::usage)?;
    println!("\n== candidates, filtered by HAProxy itself: show table ft_web {filter}");
    let mut offenders = Vec::new();
    client
        .show_table("ft_web", TableSelect::Filters(vec![filter]))
        .await?
        .for_each(|item| {
            if let TableItem::Entry(e) = item {
                offenders.extend(e.key_addr());
            }
        })
        .await?;
    println!("   {offenders:?}");

    let gpt0: DataField = "gpt0".parse().map_err(Failure::runtime)?;
    for ip in &offenders {
        let key = TableKey::from_addr(KeyType::Ip, *ip).map_err(Failure::runtime)?;
        client.set_table("ft_web", key, &[(gpt0.clone(), 1)]).await?;
        println!("   blocked {ip}: set table ft_web key {ip} data.gpt0 1");
    }

    println!("\n== after the block");
    probe(&sb, &[abuser, normal]).await?;
    println!("\n== stickwarden table ft_web --where 'data.gpt0 gt 0'");
    print_table(&client, TableSelect::Filters(vec!["data.gpt0 gt 0".parse().map_err(Failure::runtime)?])).await?;

    for ip in &offenders {
        let key = TableKey::from_addr(KeyType::Ip, *ip).map_err(Failure::runtime)?;
        client.set_table("ft_web", key.clone(), &[(gpt0.clone(), 0)]).await?;
        client.clear_table_key("ft_web", key).await?;
        println!("\n== released {ip}: set table ... data.gpt0 0; clear table ft_web key {ip}");
    }
    probe(&sb, &[abuser, normal]).await?;

    if a.hold.unwrap_or_else(|| std::io::stdout().is_terminal()) {
        println!("\nHAProxy stays up until Ctrl-C. Try, in another terminal:");
        println!("   cargo run -q -- table --haproxy {} ft_web", sb.admin());
        println!("   echo 'show table ft_web' | socat stdio {}", sb.admin().trim_start_matches("unix:"));
        tokio::signal::ctrl_c().await.map_err(Failure::runtime)?;
    }
    println!("\ndemo done: the rules engine, sled store and escalation ladder come with the enforcement loop.");
    Ok(())
}

async fn print_table(client: &Client, select: TableSelect) -> Result<(), Failure> {
    let mut printer = DumpPrinter::new(std::io::stdout().lock(), Format::Human);
    client.show_table("ft_web", select).await?.for_each(|item| printer.item(item, true)).await?;
    printer.finish().map_err(Failure::runtime)?.flush().map_err(Failure::runtime)
}

async fn probe(sb: &Sandbox, clients: &[std::net::IpAddr]) -> Result<(), Failure> {
    // A fresh connection per probe: HAProxy reads the tag when a request arrives.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for ip in clients {
        let status = sandbox::http_get(*ip, sb.web_port).await.map_err(Failure::runtime)?;
        println!("   GET / from {ip}: {status}");
    }
    Ok(())
}

fn statuses(counts: &[(u16, usize)]) -> String {
    counts.iter().map(|(s, n)| format!("{n} x {s}")).collect::<Vec<_>>().join(", ")
}
