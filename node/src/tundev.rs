//! The TUN device: created with the netmap's overlay addresses, and kept in
//! step with them when a new netmap moves the node.
//!
//! Each address gets the prefix length of the netmap `overlay` prefix that
//! contains it, so the kernel's connected route sends the whole overlay into
//! the tunnel without a route table of our own; overlay prefixes that hold
//! none of the node's addresses get an explicit route (`ip route`).

use std::net::IpAddr;

use anyhow::Context as _;
use ipnet::IpNet;
use segmesh_config::{NetMap, NodeConfig};
use tun_rs::{DeviceBuilder, SyncDevice};

/// Packets the kernel queues towards the node (tun's default is 500): a
/// burst that arrives while the packet thread waits for a core is queued,
/// not dropped (the harness counts these drops as `if_tx_dropped`).
const TX_QUEUE_LEN: u32 = 1000;

/// The address's prefix length on the TUN: that of the widest overlay
/// prefix containing it, else a host route.
pub fn prefix_for(addr: IpAddr, overlay: &[IpNet]) -> u8 {
    overlay
        .iter()
        .filter(|n| n.contains(&addr))
        .map(IpNet::prefix_len)
        .min()
        .unwrap_or(if addr.is_ipv4() { 32 } else { 128 })
}

/// What the interface should carry for a netmap: addresses with prefix
/// lengths, and routes for overlay prefixes without one of our addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub addresses: Vec<(IpAddr, u8)>,
    pub routes: Vec<IpNet>,
}

impl Layout {
    pub fn of(map: &NetMap) -> Self {
        let addresses = map
            .node
            .addresses
            .iter()
            .map(|&a| (a, prefix_for(a, &map.overlay)))
            .collect();
        let routes = map
            .overlay
            .iter()
            .filter(|n| !map.node.addresses.iter().any(|a| n.contains(a)))
            .copied()
            .collect();
        Self { addresses, routes }
    }
}

fn add_address(dev: &SyncDevice, addr: IpAddr, prefix: u8) -> std::io::Result<()> {
    match addr {
        IpAddr::V4(a) => dev.add_address_v4(a, prefix),
        IpAddr::V6(a) => dev.add_address_v6(a, prefix),
    }
}

fn route(op: &str, net: &IpNet, interface: &str) {
    let ok = std::process::Command::new("ip")
        .args(["route", op, &net.to_string(), "dev", interface])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        tracing::warn!(prefix = %net, interface, op, "could not change a route for an overlay prefix");
    }
}

/// Creates the TUN device for `map`, with offloads (virtio headers, TSO)
/// when the config asks for them and the kernel grants them.
pub fn create(config: &NodeConfig, map: &NetMap) -> anyhow::Result<SyncDevice> {
    if config.offload {
        match build(config, map, true) {
            Ok(dev) => return Ok(dev),
            Err(e) => tracing::warn!(
                interface = config.interface.as_str(),
                error = %format_args!("{e:#}"),
                "creating the TUN device with offloads failed; retrying without (one packet per system call)"
            ),
        }
    }
    build(config, map, false)
}

fn build(config: &NodeConfig, map: &NetMap, offload: bool) -> anyhow::Result<SyncDevice> {
    let name = config.interface.as_str();
    let layout = Layout::of(map);
    let mut b = DeviceBuilder::new()
        .name(name)
        .mtu(config.mtu)
        .tx_queue_len(TX_QUEUE_LEN)
        .offload(offload);
    // The builder takes one IPv4 address; any others are added after.
    let first_v4 = layout.addresses.iter().find(|(a, _)| a.is_ipv4()).copied();
    if let Some((IpAddr::V4(a), p)) = first_v4 {
        b = b.ipv4(a, p, None);
    }
    for &(a, p) in &layout.addresses {
        if let IpAddr::V6(a) = a {
            b = b.ipv6(a, p);
        }
    }
    let dev = b.build_sync().with_context(|| {
        format!("creating TUN device {name} (needs CAP_NET_ADMIN and /dev/net/tun)")
    })?;
    for &(a, p) in layout.addresses.iter().filter(|(a, _)| a.is_ipv4()).skip(1) {
        add_address(&dev, a, p).with_context(|| format!("adding {a}/{p} to {name}"))?;
    }
    for net in &layout.routes {
        route("replace", net, name);
    }
    Ok(dev)
}

/// Moves the interface from `old`'s layout to `new`'s: addresses and routes
/// that went away are removed, new ones added. Failures are logged; the
/// tunnel keeps running with what it has.
pub fn sync(dev: &SyncDevice, interface: &str, old: &NetMap, new: &NetMap) {
    let (old, new) = (Layout::of(old), Layout::of(new));
    if old == new {
        return;
    }
    for &(a, p) in old.addresses.iter().filter(|x| !new.addresses.contains(x)) {
        match dev.remove_address(a) {
            Ok(()) => {
                tracing::info!(address = %a, prefix = p, interface, "overlay address removed")
            }
            Err(e) => {
                tracing::warn!(address = %a, interface, error = %e, "could not remove an overlay address")
            }
        }
    }
    for &(a, p) in new.addresses.iter().filter(|x| !old.addresses.contains(x)) {
        match add_address(dev, a, p) {
            Ok(()) => tracing::info!(address = %a, prefix = p, interface, "overlay address added"),
            Err(e) => {
                tracing::warn!(address = %a, interface, error = %e, "could not add an overlay address")
            }
        }
    }
    for net in old.routes.iter().filter(|n| !new.routes.contains(n)) {
        route("del", net, interface);
    }
    for net in new.routes.iter().filter(|n| !old.routes.contains(n)) {
        route("replace", net, interface);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use segmesh_config::{NETMAP_FORMAT, NodeName, PublicKey, SelfNode};

    #[test]
    fn layout_from_overlay() {
        let overlay: Vec<IpNet> = vec![
            "100.64.0.0/16".parse().unwrap(),
            "fd5e::/64".parse().unwrap(),
        ];
        assert_eq!(prefix_for("100.64.1.2".parse().unwrap(), &overlay), 16);
        assert_eq!(prefix_for("fd5e::2".parse().unwrap(), &overlay), 64);
        assert_eq!(prefix_for("10.1.1.1".parse().unwrap(), &overlay), 32);
        let map = NetMap {
            format: NETMAP_FORMAT,
            version: 1,
            node: SelfNode {
                name: NodeName::new("a").unwrap(),
                public_key: PublicKey::from_bytes([1; 32]),
                addresses: vec!["100.64.0.1".parse().unwrap()],
                labels: Default::default(),
            },
            overlay,
            peers: vec![],
        };
        let l = Layout::of(&map);
        assert_eq!(l.addresses, vec![("100.64.0.1".parse().unwrap(), 16)]);
        assert_eq!(l.routes, vec!["fd5e::/64".parse::<IpNet>().unwrap()]);
    }
}
