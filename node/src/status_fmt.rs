//! `segmesh-node status`: the human table and the `--json` form, printed
//! from the same [`NodeStatus`] the node sent over its control socket.

use std::fmt::Write as _;

use crate::status::{DropReason, NodeStatus};

/// Prints the status to stdout: pretty JSON with `json`, else the table.
pub fn print_status(status: &NodeStatus, json: bool) {
    if json {
        match serde_json::to_string_pretty(status) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: serialising status: {e}"),
        }
        return;
    }
    // The wall clock is only needed to say how long ago handshakes were.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    print!("{}", format_status(status, now));
}

/// The human table, with handshake ages relative to `now_unix_ms`.
pub fn format_status(s: &NodeStatus, now_unix_ms: u64) -> String {
    let mut out = String::new();
    let name = s.name.as_ref().map(|n| n.as_str()).unwrap_or("-");
    let addrs: Vec<String> = s.addresses.iter().map(|a| a.to_string()).collect();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "node:       {name}");
    let _ = writeln!(
        out,
        "interface:  {} (udp port {})",
        s.interface, s.listen_port
    );
    let _ = writeln!(out, "public key: {}", s.public_key);
    let addrs = if addrs.is_empty() {
        "-".to_string()
    } else {
        addrs.join(", ")
    };
    let _ = writeln!(out, "addresses:  {addrs}");
    let _ = writeln!(
        out,
        "netmap:     version {}, {} peer{}",
        s.netmap_version,
        s.peers.len(),
        if s.peers.len() == 1 { "" } else { "s" }
    );
    out.push('\n');

    let header = [
        "PEER",
        "KEY",
        "ENDPOINT",
        "ALLOWED IPS",
        "HANDSHAKE",
        "RX",
        "TX",
        "OUT",
        "IN",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for p in &s.peers {
        let key = p.public_key.to_string();
        let nets: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
        rows.push(vec![
            p.name
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            format!("{}…", &key[..8]),
            p.endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            join_or_dash(&nets),
            match p.last_handshake_unix_ms {
                Some(t) => ago(now_unix_ms.saturating_sub(t) / 1000),
                None => "never".into(),
            },
            bytes(p.rx_bytes),
            bytes(p.tx_bytes),
            join_or_dash(&p.outbound),
            join_or_dash(&p.inbound),
        ]);
    }
    if s.peers.is_empty() {
        out.push_str("no peers\n");
    } else {
        out.push_str(&table(&rows));
    }
    out.push('\n');
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .map(|r| format!("{} {}", r.as_str(), s.drops.get(*r)))
        .collect();
    let _ = writeln!(out, "drops: {}", drops.join(", "));
    let t = &s.tun;
    let _ = writeln!(
        out,
        "tun:   {} packets in {} reads, {} packets in {} writes",
        t.packets_read, t.reads, t.packets_written, t.writes
    );
    let _ = writeln!(
        out,
        "sched: tun thread {}, udp thread {}",
        s.threads.tun.as_str(),
        s.threads.udp.as_str()
    );
    out
}

fn join_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// Left-aligned columns separated by two spaces, no trailing spaces.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `12s ago`, `3m 4s ago`, `2h 5m ago`, `3d 4h ago`.
pub fn ago(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h ago")
    } else if h > 0 {
        format!("{h}h {m}m ago")
    } else if m > 0 {
        format!("{m}m {s}s ago")
    } else {
        format!("{s}s ago")
    }
}

/// Byte counts in binary units with one decimal: `512 B`, `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DropCounters, PeerStatus, Policy, ThreadPolicies, TunCounters};
    use segmesh_config::PublicKey;

    #[test]
    fn ages_and_sizes() {
        assert_eq!(ago(0), "0s ago");
        assert_eq!(ago(12), "12s ago");
        assert_eq!(ago(184), "3m 4s ago");
        assert_eq!(ago(2 * 3600 + 5 * 60 + 9), "2h 5m ago");
        assert_eq!(ago(3 * 86400 + 4 * 3600), "3d 4h ago");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn table_shows_peers_handshakes_bytes_and_drops() {
        let key = PublicKey::from_bytes([9; 32]);
        let s = NodeStatus {
            name: Some("web-1".parse().unwrap()),
            interface: "sm0".into(),
            public_key: PublicKey::from_bytes([1; 32]),
            listen_port: 51820,
            addresses: vec!["100.80.0.1".parse().unwrap()],
            netmap_version: 3,
            peers: vec![
                PeerStatus {
                    public_key: key,
                    name: Some("api-1".parse().unwrap()),
                    endpoint: Some("10.9.0.2:51820".parse().unwrap()),
                    allowed_ips: vec!["100.80.0.2/32".parse().unwrap()],
                    last_handshake_unix_ms: Some(88_000),
                    rx_bytes: 2048,
                    tx_bytes: 100,
                    outbound: vec!["tcp/8080".into()],
                    inbound: vec![],
                },
                PeerStatus {
                    public_key: PublicKey::from_bytes([8; 32]),
                    name: None,
                    endpoint: None,
                    allowed_ips: vec!["100.80.0.9/32".parse().unwrap()],
                    last_handshake_unix_ms: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    outbound: vec![],
                    inbound: vec!["tcp/22".into()],
                },
            ],
            drops: DropCounters {
                no_route: 3,
                unknown_key: 2,
                ..DropCounters::default()
            },
            tun: TunCounters {
                reads: 10,
                packets_read: 450,
                writes: 4,
                packets_written: 160,
            },
            threads: ThreadPolicies {
                tun: Policy::Defer,
                udp: Policy::Preempt,
            },
        };
        let out = format_status(&s, 100_000);
        let k8 = &key.to_string()[..8];
        let want_row = format!(
            "api-1  {k8}…  10.9.0.2:51820  100.80.0.2/32  12s ago    2.0 KiB  100 B  tcp/8080  -"
        );
        assert!(out.contains(&want_row), "{out}");
        assert!(out.contains("never"), "{out}");
        assert!(out.contains("netmap:     version 3, 2 peers"), "{out}");
        assert!(
            out.contains(
                "drops: unknown_key 2, no_route 3, spoofed_source 0, policy 0, bad_packet 0"
            ),
            "{out}"
        );
        assert!(
            out.contains("tun:   450 packets in 10 reads, 160 packets in 4 writes"),
            "{out}"
        );
        assert!(
            out.contains("sched: tun thread SCHED_BATCH, udp thread SCHED_OTHER"),
            "{out}"
        );
        for line in out.lines() {
            assert_eq!(line, line.trim_end(), "no trailing spaces");
        }
    }
}
