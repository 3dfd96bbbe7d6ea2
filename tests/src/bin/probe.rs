//! A tiny TCP tool the end-to-end tests run inside network namespaces, so the
//! tests depend on nothing but the binaries this workspace builds.
//!
//! ```text
//! probe listen ADDR:PORT                 # echo server; prints "ready", then "accepted PEER" per connection
//! probe connect ADDR:PORT [--timeout-ms N] [--message TEXT]
//!                                        # one JSON line {"ok","ms","reply"|"error","errno"}; exit 1 on failure
//! probe udp-hold ADDR:PORT              # binds a UDP port and keeps it; prints "ready"
//! probe udp-send ADDR:PORT PAYLOAD_HEX [--count N]
//!                                        # sends N datagrams (default 1)
//! probe udp-scan IP FIRST_PORT LAST_PORT  # one datagram to each port (a port scan)
//! probe stream ADDR:PORT [--interval-ms N] [--duration-ms N] [--read-timeout-ms N]
//!                                        # echo every interval; prints "ok UNIX_MS" per echo, "fail UNIX_MS ERR" at the end
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("listen") => listen(&args[1..]),
        Some("connect") => connect(&args[1..]),
        Some("stream") => stream(&args[1..]),
        Some("udp-hold") => udp_hold(&args[1..]),
        Some("udp-send") => udp_send(&args[1..]),
        Some("udp-scan") => udp_scan(&args[1..]),
        _ => Err(
            "usage: probe listen|connect|stream|udp-hold|udp-send|udp-scan ADDR:PORT [options]"
                .into(),
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("probe: {e}");
            ExitCode::from(2)
        }
    }
}

fn addr(args: &[String]) -> Result<SocketAddr, String> {
    let a = args.first().ok_or("missing ADDR:PORT")?;
    a.parse().map_err(|e| format!("bad address {a:?}: {e}"))
}

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn opt_ms(args: &[String], name: &str, default: u64) -> Result<Duration, String> {
    match opt(args, name) {
        Some(v) => v
            .parse()
            .map(Duration::from_millis)
            .map_err(|e| format!("{name} {v:?}: {e}")),
        None => Ok(Duration::from_millis(default)),
    }
}

#[allow(clippy::disallowed_methods)] // a test tool: it reports wall-clock times
fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn listen(args: &[String]) -> Result<ExitCode, String> {
    let at = addr(args)?;
    let l = TcpListener::bind(at).map_err(|e| format!("bind {at}: {e}"))?;
    println!("ready");
    let _ = std::io::stdout().flush();
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        if let Ok(peer) = conn.peer_addr() {
            println!("accepted {peer}");
            let _ = std::io::stdout().flush();
        }
        std::thread::spawn(move || echo(conn));
    }
    Ok(ExitCode::SUCCESS)
}

fn udp_hold(args: &[String]) -> Result<ExitCode, String> {
    let at = addr(args)?;
    let _sock = std::net::UdpSocket::bind(at).map_err(|e| format!("bind udp {at}: {e}"))?;
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn udp_send(args: &[String]) -> Result<ExitCode, String> {
    let at = addr(args)?;
    let hex = args.get(1).ok_or("missing PAYLOAD_HEX")?;
    let payload = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("x"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| format!("bad hex {hex:?}: {e}"))?;
    let count: u32 = opt(args, "--count")
        .map(|c| c.parse().map_err(|e| format!("--count {c:?}: {e}")))
        .transpose()?
        .unwrap_or(1);
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    for _ in 0..count {
        sock.send_to(&payload, at)
            .map_err(|e| format!("send to {at}: {e}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn udp_scan(args: &[String]) -> Result<ExitCode, String> {
    let ip: std::net::IpAddr = args
        .first()
        .ok_or("missing IP")?
        .parse()
        .map_err(|e| format!("bad IP: {e}"))?;
    let port = |i: usize| -> Result<u16, String> {
        let a = args.get(i).ok_or("missing port")?;
        a.parse().map_err(|e| format!("bad port {a:?}: {e}"))
    };
    let (first, last) = (port(1)?, port(2)?);
    let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = std::net::UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    let mut sent = 0u32;
    for p in first..=last {
        // ICMP errors from earlier ports surface as errors here: ignore them.
        if sock.send_to(b"scan", SocketAddr::new(ip, p)).is_ok() {
            sent += 1;
        }
    }
    println!("sent {sent}");
    Ok(ExitCode::SUCCESS)
}

fn echo(conn: TcpStream) {
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        if w.write_all(line.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

/// Connects, sends one line, waits for its echo.
fn exchange(at: SocketAddr, timeout: Duration, msg: &str) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&at, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    (&s).write_all(format!("{msg}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

#[allow(clippy::disallowed_methods)] // a test tool: it measures how long a connect took
fn connect(args: &[String]) -> Result<ExitCode, String> {
    let at = addr(args)?;
    let timeout = opt_ms(args, "--timeout-ms", 3000)?;
    let msg = opt(args, "--message").unwrap_or_else(|| "hello".into());
    let t0 = Instant::now();
    let res = exchange(at, timeout, &msg);
    let ms = t0.elapsed().as_millis() as u64;
    let (out, code) = match res {
        Ok(reply) => (
            serde_json::json!({"ok": true, "ms": ms, "reply": reply}),
            ExitCode::SUCCESS,
        ),
        Err(e) => (
            serde_json::json!({"ok": false, "ms": ms, "error": e.to_string(),
                               "kind": format!("{:?}", e.kind()), "errno": e.raw_os_error()}),
            ExitCode::FAILURE,
        ),
    };
    println!("{out}");
    Ok(code)
}

#[allow(clippy::disallowed_methods)] // a test tool: paced by the wall clock
fn stream(args: &[String]) -> Result<ExitCode, String> {
    let at = addr(args)?;
    let interval = opt_ms(args, "--interval-ms", 20)?;
    let duration = opt_ms(args, "--duration-ms", 10_000)?;
    let read_timeout = opt_ms(args, "--read-timeout-ms", 300)?;
    let s = TcpStream::connect_timeout(&at, Duration::from_secs(3))
        .map_err(|e| format!("connect {at}: {e}"))?;
    s.set_read_timeout(Some(read_timeout))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut w = s;
    let t0 = Instant::now();
    let mut out = std::io::stdout();
    let mut line = String::new();
    while t0.elapsed() < duration {
        let res = w
            .write_all(b"x\n")
            .and_then(|()| r.read_line(&mut line).map(|_| ()));
        match res {
            Ok(()) if line == "x\n" => {
                let _ = writeln!(out, "ok {}", unix_ms());
            }
            Ok(()) => {
                let _ = writeln!(out, "fail {} closed", unix_ms());
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => {
                let _ = writeln!(out, "fail {} {e}", unix_ms());
                return Ok(ExitCode::FAILURE);
            }
        }
        let _ = out.flush();
        line.clear();
        std::thread::sleep(interval);
    }
    Ok(ExitCode::SUCCESS)
}
