//! Applying a new netmap with SIGHUP: a removed peer is cut off at once, and
//! a netmap file that does not parse leaves the running one in place.

use std::net::SocketAddr;
use std::time::Duration;

use segmesh_e2e::mesh::{addr, netmap, web_api_pair};
use segmesh_e2e::{Lab, Proc, bin_path, probe, wait_until};

fn unix_ms() -> u128 {
    #[allow(clippy::disallowed_methods)] // the cut-off is measured in real time
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

#[test]
fn removing_a_peer_and_sighup_cuts_its_traffic_within_a_second() {
    let lab = Lab::new("hup");
    let (web, api) = web_api_pair(&lab);
    let api_8080 = SocketAddr::new(addr(&api.setup), 8080);
    let _l = probe::listen(&lab, &api.setup.host, api_8080);
    probe::connect_eventually(web.ns(), api_8080, Duration::from_secs(10));

    // A live TCP stream, one echo every 20 ms.
    let stream = Proc::spawn(
        "stream",
        Some(web.ns()),
        lab.dir(),
        &bin_path("probe"),
        &[
            "stream",
            &api_8080.to_string(),
            "--interval-ms",
            "20",
            "--duration-ms",
            "15000",
        ],
    );
    let ok_times = |p: &Proc| -> Vec<u128> {
        p.stdout_text()
            .lines()
            .filter_map(|l| l.strip_prefix("ok ").and_then(|t| t.parse().ok()))
            .collect()
    };
    wait_until(Duration::from_secs(5), "the stream to carry echoes", || {
        (ok_times(&stream).len() >= 20).then_some(())
    });

    // api-1's new netmap no longer lists web-1.
    api.setup
        .write_netmap(&netmap(&api.setup, &[addr(&api.setup)], vec![]));
    let t_hup = unix_ms();
    api.reload();
    let mut stream = stream;
    wait_until(Duration::from_secs(10), "the stream to break", || {
        stream.try_exit()
    });
    let last_ok = ok_times(&stream).last().copied().unwrap_or(0);
    let cut_ms = last_ok.saturating_sub(t_hup);
    let failed_at: u128 = stream
        .stdout_text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("fail ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    println!(
        "SIGHUP -> last echo through the tunnel: {cut_ms} ms; client gave up after {} ms \
         (echo every 20 ms, 300 ms read timeout)",
        failed_at.saturating_sub(t_hup)
    );
    assert!(
        last_ok + 1000 > t_hup,
        "the stream had stopped before the reload"
    );
    assert!(
        cut_ms < 1000,
        "traffic continued {cut_ms} ms after the reload"
    );
    assert!(
        stream.stdout_text().contains("fail "),
        "{}",
        stream.stdout_text()
    );

    // The peer is gone from status, and new connections fail too.
    assert!(api.status().peers.is_empty());
    let c = probe::connect(web.ns(), api_8080, Duration::from_secs(2));
    assert!(!c.ok, "{c:?}");
}

#[test]
fn a_netmap_that_does_not_parse_keeps_the_old_one() {
    let lab = Lab::new("badmap");
    let (web, api) = web_api_pair(&lab);
    let api_8080 = SocketAddr::new(addr(&api.setup), 8080);
    let _l = probe::listen(&lab, &api.setup.host, api_8080);
    probe::connect_eventually(web.ns(), api_8080, Duration::from_secs(10));
    let before = api.status();

    std::fs::write(&api.setup.netmap_path, "{\"format\": 1, \"peers\": [oops").expect("write");
    api.reload();
    let path = api.setup.netmap_path.display().to_string();
    wait_until(
        Duration::from_secs(5),
        "the node to log the bad netmap",
        || api.proc.stderr_text().contains(&path).then_some(()),
    );

    let mut api = api;
    assert!(
        api.proc.try_exit().is_none(),
        "the node exited on a bad netmap"
    );
    let after = api.status();
    assert_eq!(after.netmap_version, before.netmap_version);
    assert_eq!(
        after.peers.iter().map(|p| p.public_key).collect::<Vec<_>>(),
        before
            .peers
            .iter()
            .map(|p| p.public_key)
            .collect::<Vec<_>>()
    );
    let c = probe::connect(web.ns(), api_8080, Duration::from_secs(3));
    assert!(c.ok, "traffic stopped after a bad netmap: {c:?}");
}
