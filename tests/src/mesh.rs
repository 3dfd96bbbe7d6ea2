//! Building a mesh's netmaps from a policy and an inventory, the way an
//! operator does offline.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use segmesh_config::{NETMAP_FORMAT, NetMap, Peer, PortSet, PublicKey, SelfNode};

use crate::cmd::run;
use crate::lab::Lab;
use crate::node::{NodeHandle, NodeSetup, bin_path};

/// The overlay IPv4 address of a node: 100.80.0.N for underlay 10.77.0.N.
pub fn overlay_v4(node: &NodeSetup) -> Ipv4Addr {
    Ipv4Addr::new(100, 80, 0, node.host.underlay.octets()[3])
}

/// The overlay IPv6 address of a node: fd5e:6d00::N.
pub fn overlay_v6(node: &NodeSetup) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd5e,
        0x6d00,
        0,
        0,
        0,
        0,
        0,
        u16::from(node.host.underlay.octets()[3]),
    )
}

/// An inventory file listing `nodes` with their labels (`"role=web"`),
/// overlay addresses and endpoints.
pub fn inventory_toml(nodes: &[(&NodeSetup, &str)]) -> String {
    let mut out = String::from("overlay = [\"100.80.0.0/16\", \"fd5e:6d00::/64\"]\n");
    for (n, labels) in nodes {
        let labels: Vec<String> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| format!("{k} = \"{v}\""))
            .collect();
        out.push_str(&format!(
            "\n[[node]]\nname = \"{}\"\nlabels = {{ {} }}\npublic_key = \"{}\"\n\
             addresses = [\"{}\", \"{}\"]\nendpoints = [\"{}\"]\n",
            n.name,
            labels.join(", "),
            n.public_key,
            overlay_v4(n),
            overlay_v6(n),
            n.endpoint(),
        ));
    }
    out
}

/// Writes `policy.toml` and `inventory.toml` into the lab and compiles the
/// netmap of each node in `names` the way an operator does:
/// `segmeshctl policy netmap policy.toml --inventory inventory.toml --node NAME --json`.
pub fn compile_netmaps(
    lab: &Lab,
    policy: &str,
    inventory: &str,
    names: &[&str],
) -> BTreeMap<String, NetMap> {
    let policy_path = lab.path("policy.toml");
    let inventory_path = lab.path("inventory.toml");
    std::fs::write(&policy_path, policy).expect("write policy");
    std::fs::write(&inventory_path, inventory).expect("write inventory");
    let ctl = bin_path("segmeshctl");
    names
        .iter()
        .map(|name| {
            let out = run(
                ctl.to_str().expect("utf-8 path"),
                &[
                    "policy",
                    "netmap",
                    policy_path.to_str().expect("utf-8 path"),
                    "--inventory",
                    inventory_path.to_str().expect("utf-8 path"),
                    "--node",
                    name,
                    "--json",
                ],
            );
            let map = NetMap::from_json(&out.stdout)
                .unwrap_or_else(|e| panic!("segmeshctl's netmap for {name}: {e}"));
            (name.to_string(), map)
        })
        .collect()
}

/// The overlay address of `node` as an `IpAddr`.
pub fn addr(node: &NodeSetup) -> IpAddr {
    IpAddr::V4(overlay_v4(node))
}

/// A netmap written by hand (for nodes no policy would produce: a rogue, a
/// spoofer, a stock WireGuard peer).
pub fn netmap(node: &NodeSetup, addresses: &[IpAddr], peers: Vec<Peer>) -> NetMap {
    NetMap {
        format: NETMAP_FORMAT,
        version: 1,
        node: SelfNode {
            name: node.name.parse().expect("node name"),
            public_key: node.public_key,
            addresses: addresses.to_vec(),
            labels: Default::default(),
        },
        overlay: vec!["100.80.0.0/16".parse().expect("prefix")],
        peers,
    }
}

/// A peer entry: `allowed` as /32s, port sets like `["tcp/5432"]`, and the
/// endpoint (with the name) only when this side may open flows
/// (need-to-know, as the compiler does).
pub fn peer(
    key: PublicKey,
    name: &str,
    allowed: &[IpAddr],
    endpoint: Option<SocketAddr>,
    outbound: &[&str],
    inbound: &[&str],
) -> Peer {
    let ports = |specs: &[&str]| -> PortSet {
        serde_json::from_value(serde_json::json!(specs)).expect("port specs")
    };
    let outbound = ports(outbound);
    let known = !outbound.is_empty();
    Peer {
        public_key: key,
        allowed_ips: allowed.iter().map(|a| IpNet::from(*a)).collect(),
        outbound,
        inbound: ports(inbound),
        name: known.then(|| name.parse().expect("peer name")),
        labels: None,
        endpoints: endpoint.filter(|_| known).map(|e| [e].into()),
    }
}

/// Two running nodes on hosts `web-1` and `api-1`: web-1 may open tcp/8080
/// on api-1, nothing else.
pub fn web_api_pair(lab: &Lab) -> (NodeHandle, NodeHandle) {
    let (hw, ha) = (lab.host("web-1"), lab.host("api-1"));
    let web = NodeSetup::new(lab, &hw, "web-1");
    let api = NodeSetup::new(lab, &ha, "api-1");
    web.write_netmap(&netmap(
        &web,
        &[addr(&web)],
        vec![peer(
            api.public_key,
            "api-1",
            &[addr(&api)],
            Some(api.endpoint()),
            &["tcp/8080"],
            &[],
        )],
    ));
    api.write_netmap(&netmap(
        &api,
        &[addr(&api)],
        vec![peer(
            web.public_key,
            "web-1",
            &[addr(&web)],
            None,
            &[],
            &["tcp/8080"],
        )],
    ));
    (web.start(lab), api.start(lab))
}
