//! Control-plane load generator: N simulated nodes over real mTLS against a
//! coordinator, and the distribution of change -> netmap-received and
//! change -> ack-sent times. Each simulated node holds one session (GET
//! /v1/session, as `segmesh-node` does) and acks on it.
//!
//! By default it starts an in-process coordinator on 127.0.0.1 with a temp
//! data dir (so it measures the coordinator's distribution path, sharing the
//! machine's cores with the simulated nodes). Nodes are put in groups of
//! `--group` that may talk within the group, so a label change affects one
//! or two groups and a policy change affects every node.
//!
//! With `--coordinator-bin`, the coordinator runs as its own process (the
//! real `segmesh-coordinator serve` binary), so its memory and CPU are
//! measured apart from the simulated nodes' (read from /proc).
//!
//! ```sh
//! segmesh-loadgen --nodes 1000 --group 20
//! segmesh-loadgen --nodes 10000 --coordinator-bin target/release/segmesh-coordinator
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use segmesh_config::PublicKey;
use segmesh_config::client::{HttpsClient, ServerTrust, tls_config};
use segmesh_config::control::{EnrollResponse, JoinToken, NodeMessage};
use segmesh_coordinator::clock::SystemClock;
use segmesh_coordinator::config::CoordinatorConfig;
use segmesh_coordinator::server::{ADMIN_TOKEN_FILE, spawn};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(
    name = "segmesh-loadgen",
    about = "N simulated nodes against a coordinator"
)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Nodes per group (groups talk within themselves).
    #[arg(long, default_value_t = 20)]
    group: usize,
    /// Label changes to measure.
    #[arg(long, default_value_t = 5)]
    label_changes: usize,
    /// Run this `segmesh-coordinator` binary as a child process instead of
    /// an in-process coordinator, and report its RSS and CPU separately.
    #[arg(long)]
    coordinator_bin: Option<std::path::PathBuf>,
}

/// A coordinator under test: in this process, or a child process.
enum Coordinator {
    InProcess(segmesh_coordinator::server::Running),
    Child(std::process::Child),
}

impl Coordinator {
    fn pid(&self) -> u32 {
        match self {
            Coordinator::InProcess(_) => std::process::id(),
            Coordinator::Child(c) => c.id(),
        }
    }

    async fn stop(self) {
        match self {
            Coordinator::InProcess(r) => r.stop().await,
            Coordinator::Child(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Memory and CPU of one process, from /proc.
#[derive(Debug, Clone, Copy)]
struct ProcStats {
    rss_kib: u64,
    peak_kib: u64,
    cpu: Duration,
}

fn proc_stats(pid: u32) -> anyhow::Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, in clock ticks (100 Hz on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Ok(ProcStats {
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
        cpu: Duration::from_millis(ticks * 10),
    })
}

/// The soft limit on open files; each simulated node holds one connection
/// (its session) at each end.
fn check_fd_limit(nodes: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let soft: Option<usize> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok());
    let need = nodes + 256;
    match soft {
        Some(have) if have < need => bail!(
            "{nodes} nodes need about {need} open files in this process, the limit is {have}: \
             raise it first (`ulimit -n {}`)",
            need.next_power_of_two()
        ),
        _ => Ok(()),
    }
}

/// Starts the coordinator binary as a child on 127.0.0.1 and waits until it
/// has written its CA and admin token and accepts connections.
async fn spawn_child(
    bin: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<(Coordinator, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\npublic_urls = [\"{url}\"]\n",
            dir.join("data")
        ),
    )?;
    let log = std::fs::File::create(dir.join("coordinator.log"))?;
    let child = std::process::Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        // The coordinator's phase timings of big changes (see below).
        .env(
            "RUST_LOG",
            "warn,segmesh_coordinator::api::admin=info,segmesh_coordinator::distribute=info",
        )
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let coordinator = Coordinator::Child(child);
    for _ in 0..300 {
        let ready = dir.join("data").join(ADMIN_TOKEN_FILE).exists()
            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok();
        if ready {
            return Ok((coordinator, url));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    coordinator.stop().await;
    bail!(
        "coordinator did not come up in 30 s; its log: {}",
        dir.join("coordinator.log").display()
    )
}

/// What a simulated node reads of a stream line: the version only (a real
/// node decodes and applies the whole message, on its own machine; here
/// 10,000 of them share the coordinator's cores, and fully decoding 60 MB
/// of netmaps would measure the load generator). Unknown fields are
/// skipped without being built.
#[derive(serde::Deserialize)]
struct Head {
    /// `delta` messages.
    version: Option<u64>,
    /// `netmap` messages.
    netmap: Option<VersionOnly>,
}

#[derive(serde::Deserialize)]
struct VersionOnly {
    version: u64,
}

/// (node index, netmap version, received at, acked at)
type Report = (usize, u64, Instant, Instant);

#[allow(clippy::disallowed_methods)] // a benchmark reads the clock
fn now() -> Instant {
    Instant::now()
}

fn policy(groups: usize, port: u16) -> String {
    let mut p = String::new();
    for g in 0..groups {
        p.push_str(&format!(
            "[segments.g{g}]\nmatch = {{ group = \"g{g}\" }}\n[[allow]]\nfrom = \"g{g}\"\nto = \"g{g}\"\nports = [\"tcp/{port}\"]\n"
        ));
    }
    p
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "| {what} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        v.len(),
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.9).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.group < 2 || args.nodes < args.group {
        bail!("need --group >= 2 and --nodes >= --group");
    }
    check_fd_limit(args.nodes)?;
    let groups = args.nodes.div_ceil(args.group);
    let dir = tempfile::tempdir()?;
    let (coordinator, url, data) = match &args.coordinator_bin {
        Some(bin) => {
            let (c, url) = spawn_child(bin, dir.path()).await?;
            (c, url, dir.path().join("data"))
        }
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("https://{}", listener.local_addr()?);
            let cfg = CoordinatorConfig::parse(
                "loadgen",
                &format!("data_dir = {:?}\npublic_urls = [\"{url}\"]\n", dir.path()),
            )?;
            let running = spawn(&cfg, listener, Arc::new(SystemClock)).await?;
            (
                Coordinator::InProcess(running),
                url,
                dir.path().to_path_buf(),
            )
        }
    };
    let ca_pem = std::fs::read(data.join("ca.pem")).context("coordinator CA certificate")?;
    let ca = CertificateDer::from_pem_slice(&ca_pem)?;
    let admin_token = std::fs::read_to_string(data.join(ADMIN_TOKEN_FILE))?
        .trim()
        .to_string();
    let admin = HttpsClient::new(
        &url,
        Arc::new(tls_config(&ServerTrust::Ca(vec![ca.clone()]), None)?),
    )?;
    let call = |method: &'static str, path: String, body: Value| {
        let admin = admin.clone();
        let tok = admin_token.clone();
        async move {
            let r = admin
                .request(method, &path, Some(&tok), Some(serde_json::to_vec(&body)?))
                .await?;
            if r.status >= 300 {
                bail!("{path}: {}", String::from_utf8_lossy(&r.body));
            }
            Ok::<Value, anyhow::Error>(serde_json::from_slice(&r.body)?)
        }
    };
    call(
        "POST",
        "/v1/admin/policy".into(),
        json!({ "text": policy(groups, 8080) }),
    )
    .await?;

    // Enroll.
    let t_enroll = now();
    let mut clients = Vec::new();
    for g in 0..groups {
        let n = args.group.min(args.nodes - g * args.group);
        let t = call("POST", "/v1/admin/tokens".into(), json!({ "labels": { "group": format!("g{g}") }, "name_prefix": format!("g{g}"), "ttl_secs": 3600, "uses": n })).await?;
        let token = JoinToken::parse(t["token"].as_str().context("token")?)?;
        for _ in 0..n {
            let i = clients.len();
            let key = KeyPair::generate()?;
            let csr = CertificateParams::default()
                .serialize_request(&key)?
                .pem()?;
            let mut pk = [0u8; 32];
            pk[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let body = json!({ "secret": token.secret, "public_key": PublicKey::from_bytes(pk), "csr_pem": csr });
            let r = admin
                .request("POST", "/v1/enroll", None, Some(serde_json::to_vec(&body)?))
                .await?;
            if r.status != 200 {
                bail!("enroll: {}", String::from_utf8_lossy(&r.body));
            }
            let resp: EnrollResponse = serde_json::from_slice(&r.body)?;
            let cert = CertificateDer::from_pem_slice(resp.cert_pem.as_bytes())?;
            let id = (
                vec![cert],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            );
            let tls = tls_config(&ServerTrust::Ca(vec![ca.clone()]), Some(id))?;
            clients.push((resp.name, HttpsClient::new(&url, Arc::new(tls))?));
        }
    }
    println!(
        "enrolled {} nodes in {} groups in {:?}",
        clients.len(),
        groups,
        t_enroll.elapsed()
    );

    // Sessions: each simulated node reports (version, received, ack sent).
    let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
    let t_conn = now();
    for (i, (_, c)) in clients.iter().enumerate() {
        let tx = tx.clone();
        let (mut s, mut sink) = c
            .session("/v1/session")
            .await?
            .map_err(|r| anyhow::anyhow!("session refused: {}", r.status))?;
        tokio::spawn(async move {
            while let Ok(Some(line)) = s.next_line().await {
                let got = now();
                let version = match serde_json::from_slice::<Head>(&line) {
                    Ok(Head {
                        netmap: Some(m), ..
                    }) => m.version,
                    Ok(Head {
                        version: Some(v), ..
                    }) => v,
                    _ => continue,
                };
                if sink.send(&NodeMessage::Ack { version }).await.is_err() {
                    break;
                }
                let _ = tx.send((i, version, got, now()));
            }
        });
    }
    // Drain the initial netmaps.
    let mut initial = 0;
    while initial < clients.len() {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await?
            .context("streams")?;
        initial += 1;
    }
    println!(
        "{} streams open and first netmaps acked in {:?}",
        clients.len(),
        t_conn.elapsed()
    );
    println!();
    println!("| change | nodes updated | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");

    // Label changes: move one node to the next group.
    let mut recv_l = Vec::new();
    let mut ack_l = Vec::new();
    for k in 0..args.label_changes {
        let (name, _) = &clients[(k * 7919) % clients.len()];
        let target = format!("g{}", (k + 1) % groups);
        let path = format!("/v1/admin/nodes/{name}/labels");
        let t0 = now();
        call("POST", path, json!({ "set": { "group": target } })).await?;
        let (r, a) = collect(&mut rx, t0).await;
        recv_l.extend(r);
        ack_l.extend(a);
    }
    summary("label change: received", recv_l);
    summary("label change: ack sent", ack_l);

    // A policy change that touches every netmap.
    let before = proc_stats(coordinator.pid())?;
    let t0 = now();
    call(
        "POST",
        "/v1/admin/policy".into(),
        json!({ "text": policy(groups, 9090) }),
    )
    .await?;
    let api = t0.elapsed();
    let (r, a) = collect(&mut rx, t0).await;
    let after = proc_stats(coordinator.pid())?;
    summary("policy change (all nodes): received", r);
    summary("policy change (all nodes): ack sent", a);
    println!();
    println!("policy apply API call returned after {api:?}");
    // Every ack reached the coordinator (and its store): the audit compares
    // each node's expected and acked versions.
    let audit = call("GET", "/v1/admin/audit".into(), Value::Null).await?;
    let nodes = audit["nodes"].as_array().map_or(0, Vec::len);
    let ok = audit["nodes"]
        .as_array()
        .map_or(0, |v| v.iter().filter(|n| n["status"] == "ok").count());
    println!(
        "audit after the change: clean = {}, {ok} of {nodes} nodes acked their current netmap",
        audit["clean"]
    );
    let whose = match coordinator {
        Coordinator::InProcess(_) => "loadgen process (coordinator + simulated nodes)",
        Coordinator::Child(_) => "coordinator process",
    };
    println!(
        "{whose}: RSS {:.0} MiB, peak {:.0} MiB; CPU for the policy change {:.2} s \
         (including the acks and 2 s of quiet after the last update)",
        after.rss_kib as f64 / 1024.0,
        after.peak_kib as f64 / 1024.0,
        after.cpu.saturating_sub(before.cpu).as_secs_f64()
    );
    if let Ok(log) = std::fs::read_to_string(dir.path().join("coordinator.log")) {
        for l in log
            .lines()
            .filter(|l| l.contains("policy applied") || l.contains("netmaps published"))
        {
            println!("coordinator: {}", l.trim());
        }
    }
    let m = admin.request("GET", "/metrics", None, None).await?;
    for l in String::from_utf8_lossy(&m.body).lines().filter(|l| {
        l.starts_with("segmesh_netmap_apply_seconds_count") || l.starts_with("segmesh_streams")
    }) {
        println!("{l}");
    }
    coordinator.stop().await;
    Ok(())
}

/// Collects every update until none arrives for 2 s.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Report>,
    t0: Instant,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut recv = Vec::new();
    let mut ack = Vec::new();
    while let Ok(Some((_, _, got, acked))) =
        tokio::time::timeout(Duration::from_secs(2), rx.recv()).await
    {
        recv.push(got.saturating_duration_since(t0));
        ack.push(acked.saturating_duration_since(t0));
    }
    (recv, ack)
}
