//! `segmeshctl nodes list|label|revoke` and `segmeshctl audit-log`

use clap::Subcommand;
use segmesh_config::identity::parse_label;
use serde_json::json;

use super::live::{ConnArgs, Live, block_on, time};
use super::output::{print_json, table};
use crate::api::admin::{NodeView, RevokeReport};
use crate::store::{AuditEntry, NodeRecord};

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List enrolled nodes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Set labels (KEY=VALUE ...) and remove labels (--remove KEY).
    Label {
        name: String,
        #[arg(value_parser = label_arg)]
        set: Vec<(String, String)>,
        #[arg(long = "remove", value_name = "KEY")]
        remove: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node: it leaves every netmap and its certificate is refused.
    Revoke {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

fn label_arg(s: &str) -> Result<(String, String), String> {
    parse_label(s).map_err(|e| e.to_string())
}

fn node_rows(nodes: &[NodeView]) -> Vec<Vec<String>> {
    nodes
        .iter()
        .map(|v| {
            let n = &v.node;
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let state = match (n.revoked, v.connected) {
                (true, _) => "revoked",
                (false, true) => "connected",
                (false, false) => "offline",
            };
            vec![
                n.name.to_string(),
                format!("{}, {}", n.addr_v4, n.addr_v6),
                labels.join(","),
                state.into(),
                format!("{}/{}", n.acked_version, n.netmap_version),
            ]
        })
        .collect()
}

pub fn run(conn: &ConnArgs, cmd: NodesCommand) -> anyhow::Result<()> {
    let live = Live::connect(conn)?;
    block_on(async move {
        match cmd {
            NodesCommand::List { json } => {
                let nodes: Vec<NodeView> = live.call("GET", "/v1/admin/nodes", None).await?;
                if json {
                    return print_json(&nodes);
                }
                let header = ["NAME", "ADDRESSES", "LABELS", "STATE", "NETMAP ACKED/SENT"];
                print!("{}", table(&header, &node_rows(&nodes)));
                Ok(())
            }
            NodesCommand::Label {
                name,
                set,
                remove,
                json,
            } => {
                if set.is_empty() && remove.is_empty() {
                    anyhow::bail!("nothing to change: give KEY=VALUE labels and/or --remove KEY");
                }
                let set: std::collections::BTreeMap<_, _> = set.into_iter().collect();
                let body = json!({ "set": set, "remove": remove });
                let n: NodeRecord = live
                    .call(
                        "POST",
                        &format!("/v1/admin/nodes/{name}/labels"),
                        Some(&body),
                    )
                    .await?;
                if json {
                    return print_json(&n);
                }
                let labels: Vec<String> =
                    n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("{}: {}", n.name, labels.join(","));
                Ok(())
            }
            NodesCommand::Revoke { name, json } => {
                let r: RevokeReport = live
                    .call("POST", &format!("/v1/admin/nodes/{name}/revoke"), None)
                    .await?;
                if json {
                    return print_json(&r);
                }
                println!(
                    "{} revoked: removed from {}/{} peers in {} ms",
                    r.node.name, r.peers.acked, r.peers.total, r.peers.elapsed_ms
                );
                if r.peers.acked < r.peers.total {
                    eprintln!(
                        "warning: some peers have not acked yet (offline nodes apply it when they reconnect)"
                    );
                }
                Ok(())
            }
        }
    })?
}

/// `segmeshctl audit-log`
pub fn audit_log(conn: &ConnArgs, limit: u32, json: bool) -> anyhow::Result<()> {
    let live = Live::connect(conn)?;
    let log: Vec<AuditEntry> = block_on(async move {
        live.call("GET", &format!("/v1/admin/audit-log?limit={limit}"), None)
            .await
    })??;
    if json {
        return print_json(&log);
    }
    let rows: Vec<Vec<String>> = log
        .iter()
        .map(|e| {
            vec![
                time(e.at),
                e.actor.clone(),
                e.action.clone(),
                e.details.to_string(),
            ]
        })
        .collect();
    print!("{}", table(&["WHEN", "WHO", "WHAT", "DETAILS"], &rows));
    Ok(())
}
