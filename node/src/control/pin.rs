//! Peer pinning: once a node knows a peer's key under a name or an overlay
//! address, an update that silently gives that name or address another key
//! is refused; only a coordinator-marked rotation may change it. This keeps
//! a compromised or buggy coordinator stream from quietly swapping a peer.

use segmesh_config::control::Rotation;
use segmesh_config::{NetMap, PublicKey};

/// A refused key change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("peer {what} changed key from {old} to {new} without a rotation; update refused")]
    KeyChanged {
        what: String,
        old: PublicKey,
        new: PublicKey,
    },
    #[error("this node's own name or addresses changed ({0}); update refused")]
    SelfChanged(String),
}

/// Checks `new` against `old`; `rotations` are the key changes the
/// coordinator announced with this update.
pub fn check_pins(old: &NetMap, new: &NetMap, rotations: &[Rotation]) -> Result<(), PinError> {
    if old.node.name != new.node.name {
        return Err(PinError::SelfChanged(format!(
            "name {} -> {}",
            old.node.name, new.node.name
        )));
    }
    if old.node.addresses != new.node.addresses {
        return Err(PinError::SelfChanged("overlay addresses".into()));
    }
    let rotated =
        |o: &PublicKey, n: &PublicKey| rotations.iter().any(|r| &r.old == o && &r.new == n);
    for p in &new.peers {
        for q in &old.peers {
            if q.public_key == p.public_key {
                continue;
            }
            let same_name = p.name.is_some() && p.name == q.name;
            let same_addr = p.allowed_ips.iter().any(|a| q.allowed_ips.contains(a));
            if (same_name || same_addr) && !rotated(&q.public_key, &p.public_key) {
                let what = match &p.name {
                    Some(n) if same_name => n.to_string(),
                    _ => p
                        .allowed_ips
                        .first()
                        .map_or_else(|| "?".into(), ToString::to_string),
                };
                return Err(PinError::KeyChanged {
                    what,
                    old: q.public_key,
                    new: p.public_key,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use segmesh_config::{NETMAP_FORMAT, NodeName, Peer, PortSet, SelfNode};

    fn key(b: u8) -> PublicKey {
        PublicKey::from_bytes([b; 32])
    }

    fn peer(k: u8, name: Option<&str>, ip: &str) -> Peer {
        Peer {
            public_key: key(k),
            allowed_ips: vec![ip.parse().unwrap()].into(),
            outbound: PortSet::empty(),
            inbound: PortSet::empty(),
            name: name.map(|n| NodeName::new(n).unwrap()),
            labels: None,
            endpoints: None,
        }
    }

    fn map(peers: Vec<Peer>) -> NetMap {
        NetMap {
            format: NETMAP_FORMAT,
            version: 1,
            node: SelfNode {
                name: NodeName::new("me").unwrap(),
                public_key: key(1),
                addresses: vec!["100.80.0.1".parse().unwrap()],
                labels: Default::default(),
            },
            overlay: vec![],
            peers,
        }
    }

    #[test]
    fn key_swaps_need_a_rotation() {
        let old = map(vec![peer(2, Some("db-1"), "100.80.0.2/32")]);
        // Same peer, same key: fine. Peer gone, new peer elsewhere: fine.
        assert!(check_pins(&old, &old, &[]).is_ok());
        assert!(
            check_pins(
                &old,
                &map(vec![peer(3, Some("db-2"), "100.80.0.3/32")]),
                &[]
            )
            .is_ok()
        );
        // Same address, different key (name hidden): refused.
        let swapped = map(vec![peer(9, None, "100.80.0.2/32")]);
        let err = check_pins(&old, &swapped, &[]).unwrap_err();
        assert!(matches!(err, PinError::KeyChanged { .. }), "{err}");
        // Same name, different key: refused unless rotated.
        let renamed = map(vec![peer(9, Some("db-1"), "100.80.0.9/32")]);
        assert!(check_pins(&old, &renamed, &[]).is_err());
        let rot = [Rotation {
            old: key(2),
            new: key(9),
        }];
        assert!(check_pins(&old, &renamed, &rot).is_ok());
        let wrong_rot = [Rotation {
            old: key(5),
            new: key(9),
        }];
        assert!(check_pins(&old, &renamed, &wrong_rot).is_err());
        // Our own identity never changes under us.
        let mut other = old.clone();
        other.node.addresses = vec!["100.80.0.7".parse().unwrap()];
        assert!(matches!(
            check_pins(&old, &other, &[]),
            Err(PinError::SelfChanged(_))
        ));
    }
}
