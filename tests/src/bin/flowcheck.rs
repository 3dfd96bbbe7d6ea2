//! Traffic for data path tests: a flow of numbered UDP datagrams whose
//! receiver counts reordering, and a TCP bulk transfer whose receiver
//! checks every byte. Each receiver prints one JSON line when done.
//!
//! ```text
//! flowcheck udp-recv ADDR:PORT [--idle-ms N]          # prints "ready"; ends after N ms without a datagram (default 2000)
//! flowcheck udp-send ADDR:PORT --count N [--size B]   # datagrams 0..N, as fast as the socket takes them
//! flowcheck tcp-recv ADDR:PORT                        # prints "ready"; one connection, checks the pattern
//! flowcheck tcp-send ADDR:PORT --bytes N              # sends N bytes of the pattern
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("udp-recv") => udp_recv(&args[1..]),
        Some("udp-send") => udp_send(&args[1..]),
        Some("tcp-recv") => tcp_recv(&args[1..]),
        Some("tcp-send") => tcp_send(&args[1..]),
        _ => Err("usage: flowcheck udp-recv|udp-send|tcp-recv|tcp-send ADDR:PORT [options]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowcheck: {e}");
            ExitCode::from(2)
        }
    }
}

fn addr(args: &[String]) -> Result<SocketAddr, String> {
    let a = args.first().ok_or("missing ADDR:PORT")?;
    a.parse().map_err(|e| format!("bad address {a:?}: {e}"))
}

fn num(args: &[String], name: &str, default: Option<u64>) -> Result<u64, String> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            let v = args.get(i + 1).ok_or(format!("{name} needs a value"))?;
            v.parse().map_err(|e| format!("{name} {v:?}: {e}"))
        }
        None => default.ok_or(format!("missing {name}")),
    }
}

fn ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

/// The byte at offset `i` of a TCP transfer: not periodic at any small
/// period, so a duplicated, dropped or misplaced segment shows.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn udp_recv(args: &[String]) -> Result<(), String> {
    let at = addr(args)?;
    let idle = Duration::from_millis(num(args, "--idle-ms", Some(2000))?);
    let sock = UdpSocket::bind(at).map_err(|e| format!("bind {at}: {e}"))?;
    ready();
    let mut buf = vec![0u8; 65_536];
    // Wait as long as it takes for the first datagram, then until idle.
    let (mut received, mut reordered, mut duplicates, mut max_seq) = (0u64, 0u64, 0u64, None);
    let mut bad = 0u64;
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if received > 0
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                break;
            }
            Err(e) => return Err(format!("recv: {e}")),
        };
        sock.set_read_timeout(Some(idle))
            .map_err(|e| e.to_string())?;
        let Some(seq) = buf
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
        else {
            bad += 1;
            continue;
        };
        if buf[8..n].iter().any(|&b| b != seq as u8) {
            bad += 1;
        }
        received += 1;
        match max_seq {
            Some(m) if seq == m => duplicates += 1,
            Some(m) if seq < m => reordered += 1,
            _ => max_seq = Some(seq),
        }
    }
    println!(
        "{}",
        serde_json::json!({"received": received, "reordered": reordered,
                           "duplicates": duplicates, "corrupt": bad, "max_seq": max_seq})
    );
    Ok(())
}

fn udp_send(args: &[String]) -> Result<(), String> {
    let at = addr(args)?;
    let count = num(args, "--count", None)?;
    let size = num(args, "--size", Some(1200))?.max(8) as usize;
    let any = if at.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let sock = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    let mut buf = vec![0u8; size];
    for seq in 0..count {
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        buf[8..].fill(seq as u8);
        // A full queue (ENOBUFS) loses this datagram; order is what counts.
        let _ = sock.send_to(&buf, at);
    }
    println!("{}", serde_json::json!({"sent": count}));
    Ok(())
}

fn tcp_recv(args: &[String]) -> Result<(), String> {
    let at = addr(args)?;
    let l = TcpListener::bind(at).map_err(|e| format!("bind {at}: {e}"))?;
    ready();
    let (mut conn, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut total, mut first_bad) = (0u64, None);
    loop {
        let n = conn.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        if first_bad.is_none()
            && let Some(i) = (0..n).find(|&i| buf[i] != pattern(total + i as u64))
        {
            first_bad = Some(total + i as u64);
        }
        total += n as u64;
    }
    println!(
        "{}",
        serde_json::json!({"bytes": total, "first_bad_offset": first_bad})
    );
    Ok(())
}

fn tcp_send(args: &[String]) -> Result<(), String> {
    let at = addr(args)?;
    let bytes = num(args, "--bytes", None)?;
    let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(5))
        .map_err(|e| format!("connect {at}: {e}"))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(sent + i as u64);
        }
        s.write_all(&buf[..n]).map_err(|e| format!("write: {e}"))?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    println!("{}", serde_json::json!({"sent": sent}));
    Ok(())
}
