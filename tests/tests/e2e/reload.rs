//! Applying a new netmap (SIGHUP or a changed file): a removed peer is cut
//! off at once, the others do not notice, and a netmap file that does not
//! parse leaves the running one in place.

use std::net::SocketAddr;
use std::time::Duration;

use segmesh_e2e::mesh::{addr, netmap, peer, web_api_pair};
use segmesh_e2e::{Lab, NodeSetup, probe, wait_until};

#[test]
fn removing_a_peer_and_sighup_cuts_its_traffic_within_a_second() {
    let lab = Lab::new("hup");
    let (h1, h2, ha) = (lab.host("web-1"), lab.host("web-2"), lab.host("api-1"));
    let web1 = NodeSetup::new(&lab, &h1, "web-1");
    let web2 = NodeSetup::new(&lab, &h2, "web-2");
    let api = NodeSetup::new(&lab, &ha, "api-1");
    for web in [&web1, &web2] {
        web.write_netmap(&netmap(
            web,
            &[addr(web)],
            vec![peer(
                api.public_key,
                "api-1",
                &[addr(&api)],
                Some(api.endpoint()),
                &["tcp/8080"],
                &[],
            )],
        ));
    }
    let web_peer =
        |w: &NodeSetup| peer(w.public_key, &w.name, &[addr(w)], None, &[], &["tcp/8080"]);
    api.write_netmap(&netmap(
        &api,
        &[addr(&api)],
        vec![web_peer(&web1), web_peer(&web2)],
    ));
    let (web1, web2, api) = (web1.start(&lab), web2.start(&lab), api.start(&lab));
    let api_8080 = SocketAddr::new(addr(&api.setup), 8080);
    let _l = probe::listen(&lab, &ha, api_8080);
    probe::connect_eventually(web1.ns(), api_8080, Duration::from_secs(10));
    probe::connect_eventually(web2.ns(), api_8080, Duration::from_secs(10));

    let mut s1 = probe::stream(&lab, "stream-web-1", web1.ns(), api_8080, 15_000);
    let s2 = probe::stream(&lab, "stream-web-2", web2.ns(), api_8080, 15_000);
    wait_until(
        Duration::from_secs(5),
        "both streams to carry echoes",
        || (probe::echoes(&s1).0.len() >= 20 && probe::echoes(&s2).0.len() >= 20).then_some(()),
    );
    let handshake_of = |st: &segmesh_node::status::NodeStatus, key| {
        st.peers
            .iter()
            .find(|p| p.public_key == key)
            .and_then(|p| p.last_handshake_unix_ms)
    };
    assert!(handshake_of(&api.status(), web2.setup.public_key).is_some());

    // api-1's new netmap no longer lists web-1.
    api.setup.write_netmap(&netmap(
        &api.setup,
        &[addr(&api.setup)],
        vec![web_peer(&web2.setup)],
    ));
    let t_hup = probe::unix_ms();
    api.reload();
    wait_until(Duration::from_secs(10), "web-1's stream to break", || {
        s1.try_exit()
    });
    let (oks, fail) = probe::echoes(&s1);
    let last_ok = oks.last().copied().unwrap_or(0);
    let cut_ms = last_ok.saturating_sub(t_hup);
    println!(
        "SIGHUP -> last echo through the tunnel: {cut_ms} ms; client gave up after {} ms \
         (echo every 20 ms, 1.5 s read timeout)",
        fail.unwrap_or(0).saturating_sub(t_hup)
    );
    assert!(
        last_ok + 1000 > t_hup,
        "the stream had stopped before the reload"
    );
    assert!(
        cut_ms < 1000,
        "traffic continued {cut_ms} ms after the reload"
    );
    assert!(fail.is_some(), "{}", s1.stdout_text());

    // web-2, whose entry did not change, never noticed: its stream kept
    // going and its session was not renegotiated.
    std::thread::sleep(Duration::from_millis(500));
    let (oks2, fail2) = probe::echoes(&s2);
    assert!(
        fail2.is_none(),
        "web-2's stream broke: {}",
        s2.stdout_text()
    );
    assert!(
        oks2.iter().filter(|t| **t > t_hup).count() >= 10,
        "web-2's stream stalled"
    );
    let after = api.status();
    // (The handshake time is derived from "now - elapsed", so it may move by
    // a millisecond between two reads; a new handshake would be after t_hup.)
    let hs = handshake_of(&after, web2.setup.public_key).expect("web-2 handshake");
    assert!(
        u128::from(hs) < t_hup,
        "web-2 renegotiated after the reload"
    );

    // web-1 is gone from status, and new connections from it fail too.
    assert!(
        after
            .peers
            .iter()
            .all(|p| p.public_key != web1.setup.public_key)
    );
    let c = probe::connect(web1.ns(), api_8080, Duration::from_secs(2));
    assert!(!c.ok, "{c:?}");
}

#[test]
fn rewriting_the_netmap_file_applies_it_without_a_signal() {
    let lab = Lab::new("watch");
    let (web, api) = web_api_pair(&lab);
    let api_8080 = SocketAddr::new(addr(&api.setup), 8080);
    let _l = probe::listen(&lab, &api.setup.host, api_8080);
    probe::connect_eventually(web.ns(), api_8080, Duration::from_secs(10));

    // Replace the file the way tools do: write elsewhere, rename over it.
    let tmp = lab.path("api-1.netmap.json.new");
    let mut map = netmap(&api.setup, &[addr(&api.setup)], vec![]);
    map.version = 2;
    std::fs::write(&tmp, map.to_json_pretty()).expect("write");
    std::fs::rename(&tmp, &api.setup.netmap_path).expect("rename");
    let v = wait_until(
        Duration::from_secs(5),
        "api-1 to pick up the new netmap",
        || {
            let s = api.status();
            (s.peers.is_empty()).then_some(s.netmap_version)
        },
    );
    assert_eq!(v, 2);
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
