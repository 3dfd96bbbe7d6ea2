//! `segmeshctl tokens create|list|revoke`

use clap::Subcommand;
use segmesh_config::identity::parse_labels;
use serde_json::json;

use super::live::{ConnArgs, Live, block_on, time};
use super::output::{print_json, table};
use crate::api::admin::CreatedToken;
use crate::store::TokenRecord;

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a join token; prints it once.
    Create {
        /// Labels every node joining with it gets, e.g. role=web,env=prod.
        #[arg(long, default_value = "")]
        labels: String,
        /// Names of joining nodes must start with this; unnamed nodes get PREFIX-N.
        #[arg(long)]
        name_prefix: Option<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

/// Parses `90`, `90s`, `30m`, `1h`, `7d` into seconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 30m, 1h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("invalid duration {s:?}"))
}

fn rows(tokens: &[TokenRecord]) -> Vec<Vec<String>> {
    tokens
        .iter()
        .map(|t| {
            let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                t.id.to_string(),
                t.name_prefix.clone().unwrap_or_else(|| "-".into()),
                labels.join(","),
                format!("{}/{}", t.uses_left, t.uses_total),
                time(t.expires_at),
                if t.revoked {
                    "revoked".into()
                } else {
                    "active".into()
                },
            ]
        })
        .collect()
}

const HEADER: [&str; 6] = ["ID", "PREFIX", "LABELS", "USES LEFT", "EXPIRES", "STATE"];

pub fn run(conn: &ConnArgs, cmd: TokensCommand) -> anyhow::Result<()> {
    let live = Live::connect(conn)?;
    block_on(async move {
        match cmd {
            TokensCommand::Create {
                labels,
                name_prefix,
                ttl,
                uses,
                json,
            } => {
                let labels = parse_labels(&labels)?;
                let body = json!({ "labels": labels, "name_prefix": name_prefix, "ttl_secs": ttl, "uses": uses });
                let t: CreatedToken = live.call("POST", "/v1/admin/tokens", Some(&body)).await?;
                if json {
                    print_json(&t)
                } else {
                    println!("{}", t.token);
                    eprintln!(
                        "token {}: {} use(s), expires {}; join with: segmesh-node join <TOKEN>",
                        t.record.id,
                        t.record.uses_total,
                        time(t.record.expires_at)
                    );
                    Ok(())
                }
            }
            TokensCommand::List { json } => {
                let t: Vec<TokenRecord> = live.call("GET", "/v1/admin/tokens", None).await?;
                if json {
                    print_json(&t)
                } else {
                    print!("{}", table(&HEADER, &rows(&t)));
                    Ok(())
                }
            }
            TokensCommand::Revoke { id, json } => {
                let t: TokenRecord = live
                    .call("POST", &format!("/v1/admin/tokens/{id}/revoke"), None)
                    .await?;
                if json {
                    print_json(&t)
                } else {
                    println!("token {} revoked", t.id);
                    Ok(())
                }
            }
        }
    })?
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttl() {
        assert_eq!(super::parse_ttl("90"), Ok(90));
        assert_eq!(super::parse_ttl("30m"), Ok(1800));
        assert_eq!(super::parse_ttl("7d"), Ok(604_800));
        assert!(super::parse_ttl("1y").is_err());
        assert!(super::parse_ttl("0h").is_err());
        assert!(super::parse_ttl("h").is_err());
    }
}
