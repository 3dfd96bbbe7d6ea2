//! Builds well-formed IPv4/IPv6 packets (ICMP echo, TCP, UDP) with correct
//! checksums. Used by the simulation tests and by anyone who needs to
//! inject a probe into a core; the data path itself only builds ICMP
//! errors (see [`crate::packet::build_prohibited`]).

use std::net::IpAddr;

use crate::packet::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, checksum, fold, sum16 as sum};

/// Wraps a transport segment (whose checksum field is at `csum_at`, or none
/// for ICMPv4) in an IP header and fills in all checksums.
pub fn ip(src: IpAddr, dst: IpAddr, proto: u8, mut l4: Vec<u8>, csum_at: Option<usize>) -> Vec<u8> {
    let len = l4.len();
    let mut pseudo = 0u32;
    let mut header = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + len;
            header.extend_from_slice(&[
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0x40,
                0,
                64,
                proto,
                0,
                0,
            ]);
            header.extend_from_slice(&s.octets());
            header.extend_from_slice(&d.octets());
            let c = checksum(&header);
            header[10..12].copy_from_slice(&c.to_be_bytes());
            pseudo = sum(sum(pseudo, &s.octets()), &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            header.extend_from_slice(&[0x60, 0, 0, 0, (len >> 8) as u8, len as u8, proto, 64]);
            header.extend_from_slice(&s.octets());
            header.extend_from_slice(&d.octets());
            pseudo = sum(sum(pseudo, &s.octets()), &d.octets());
        }
        _ => panic!("mixed address families"),
    }
    pseudo += len as u32 + u32::from(proto);
    if let Some(at) = csum_at {
        let c = if proto == PROTO_ICMP {
            fold(sum(0, &l4))
        } else {
            fold(sum(pseudo, &l4))
        };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    header.extend_from_slice(&l4);
    header
}

fn icmp_proto(a: IpAddr) -> (u8, u8, u8) {
    if a.is_ipv4() {
        (PROTO_ICMP, 8, 0)
    } else {
        (PROTO_ICMPV6, 128, 129)
    }
}

/// An ICMP/ICMPv6 echo request with 32 bytes of payload.
pub fn echo_request(src: IpAddr, dst: IpAddr, id: u16, seq: u16) -> Vec<u8> {
    let (proto, req, _) = icmp_proto(src);
    echo(src, dst, proto, req, id, seq)
}

/// The echo reply to an echo request built by [`echo_request`].
pub fn echo_reply(src: IpAddr, dst: IpAddr, id: u16, seq: u16) -> Vec<u8> {
    let (proto, _, rep) = icmp_proto(src);
    echo(src, dst, proto, rep, id, seq)
}

fn echo(src: IpAddr, dst: IpAddr, proto: u8, typ: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut l4 = vec![typ, 0, 0, 0];
    l4.extend_from_slice(&id.to_be_bytes());
    l4.extend_from_slice(&seq.to_be_bytes());
    l4.extend_from_slice(&[0xab; 32]);
    ip(src, dst, proto, l4, Some(2))
}

/// A TCP segment with the given flags and payload.
pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20 + payload.len());
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    l4.extend_from_slice(payload);
    ip(src, dst, PROTO_TCP, l4, Some(16))
}

/// A UDP datagram.
pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut l4 = Vec::with_capacity(len);
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[(len >> 8) as u8, len as u8, 0, 0]);
    l4.extend_from_slice(payload);
    ip(src, dst, PROTO_UDP, l4, Some(6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Class, parse};

    #[test]
    fn crafted_packets_parse() {
        for (a, b) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
            let (a, b): (IpAddr, IpAddr) = (a.parse().unwrap(), b.parse().unwrap());
            let req = parse(&echo_request(a, b, 9, 1)).unwrap();
            let rep = parse(&echo_reply(b, a, 9, 1)).unwrap();
            assert_eq!(rep.key, req.key.reversed());
            assert_eq!(rep.class, Class::Reply);
            let t = parse(&tcp(a, 1000, b, 80, 2, b"hi")).unwrap();
            assert_eq!((t.key.src_port, t.key.dst_port, t.tcp_flags), (1000, 80, 2));
            let u = parse(&udp(a, 5, b, 53, b"q")).unwrap();
            assert_eq!(u.key.dst_port, 53);
        }
        let v4 = tcp(
            "10.0.0.1".parse().unwrap(),
            1,
            "10.0.0.2".parse().unwrap(),
            2,
            2,
            &[],
        );
        assert_eq!(checksum(&v4[..20]), 0);
    }
}
