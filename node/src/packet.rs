//! IPv4/IPv6 header parsing for routing and filtering, and the ICMP
//! "administratively prohibited" errors the node sends to local senders.
//!
//! Everything here reads untrusted bytes (TUN frames written by any local
//! process, packets decrypted from peers), so every access is bounds-checked
//! and a malformed packet is an error value, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers the filter understands.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Why a frame is not a usable IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet too short")]
    TooShort,
    #[error("not an IPv4 or IPv6 packet")]
    NotIp,
    #[error("inconsistent IP header")]
    BadHeader,
    #[error("transport header truncated")]
    BadTransport,
}

/// The 5-tuple of a packet in the direction it travels. For ICMP echo the
/// identifier stands in for both ports, so that a reply's key is the
/// reverse of its request's key, exactly like TCP and UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: u8,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

impl FlowKey {
    /// The key of packets travelling the other way.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            src_port: self.dst_port,
            dst: self.src,
            dst_port: self.src_port,
        }
    }
}

/// How a packet relates to connection tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// May open a new flow (subject to policy) or belong to a tracked one.
    Flow,
    /// Only valid as part of a tracked flow (an ICMP echo reply).
    Reply,
    /// An ICMP error about the embedded flow; valid only if that flow is tracked.
    Related(FlowKey),
}

/// Fragment information of a fragmented packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// IPv4 identification or IPv6 fragment identification.
    pub id: u32,
    /// True for the fragment at offset 0, the only one carrying ports.
    pub first: bool,
}

/// What routing and the filter need to know about one IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub key: FlowKey,
    /// TCP flags, 0 for other protocols.
    pub tcp_flags: u8,
    pub class: Class,
    pub fragment: Option<Fragment>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn v4_addr(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

fn v6_addr(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let a: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}

/// Parses an IP packet whose length must match its header exactly or leave
/// trailing padding (which the IP length field excludes).
pub fn parse(b: &[u8]) -> Result<Packet, PacketError> {
    let first = *b.first().ok_or(PacketError::TooShort)?;
    match first >> 4 {
        4 => parse_v4(b),
        6 => parse_v6(b),
        _ => Err(PacketError::NotIp),
    }
}

/// The IP version nibble (4 or 6) and total length per the header, so the
/// core can trim padding without a full parse.
pub fn ip_len(b: &[u8]) -> Option<usize> {
    match b.first()? >> 4 {
        4 => be16(b, 2).map(usize::from),
        6 => be16(b, 4).map(|l| usize::from(l) + 40),
        _ => None,
    }
}

fn parse_v4(b: &[u8]) -> Result<Packet, PacketError> {
    if b.len() < 20 {
        return Err(PacketError::TooShort);
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(be16(b, 2).ok_or(PacketError::TooShort)?);
    if ihl < 20 || total < ihl || total > b.len() {
        return Err(PacketError::BadHeader);
    }
    let b = &b[..total];
    let id = u32::from(be16(b, 4).ok_or(PacketError::BadHeader)?);
    let frag_field = be16(b, 6).ok_or(PacketError::BadHeader)?;
    let more = frag_field & 0x2000 != 0;
    let offset = frag_field & 0x1fff;
    let proto = b[9];
    let src = IpAddr::V4(v4_addr(b, 12).ok_or(PacketError::BadHeader)?);
    let dst = IpAddr::V4(v4_addr(b, 16).ok_or(PacketError::BadHeader)?);
    let fragment = (more || offset != 0).then_some(Fragment {
        id,
        first: offset == 0,
    });
    finish(proto, src, dst, &b[ihl..], fragment)
}

fn parse_v6(b: &[u8]) -> Result<Packet, PacketError> {
    if b.len() < 40 {
        return Err(PacketError::TooShort);
    }
    let total = 40 + usize::from(be16(b, 4).ok_or(PacketError::TooShort)?);
    if total > b.len() {
        return Err(PacketError::BadHeader);
    }
    let b = &b[..total];
    let src = IpAddr::V6(v6_addr(b, 8).ok_or(PacketError::BadHeader)?);
    let dst = IpAddr::V6(v6_addr(b, 24).ok_or(PacketError::BadHeader)?);
    let mut next = b[6];
    let mut at = 40;
    let mut fragment = None;
    // Walk the extension headers that can precede the transport header.
    loop {
        match next {
            0 | 43 | 60 => {
                let len = (usize::from(*b.get(at + 1).ok_or(PacketError::BadHeader)?) + 1) * 8;
                next = b[at];
                at += len;
            }
            44 => {
                let h = b.get(at..at + 8).ok_or(PacketError::BadHeader)?;
                let off = u16::from_be_bytes([h[2], h[3]]) >> 3;
                let more = h[3] & 1 != 0;
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                next = h[0];
                at += 8;
                if more || off != 0 {
                    fragment = Some(Fragment {
                        id,
                        first: off == 0,
                    });
                }
                if off != 0 {
                    break;
                }
            }
            _ => break,
        }
        if at > b.len() {
            return Err(PacketError::BadHeader);
        }
    }
    finish(next, src, dst, b.get(at..).unwrap_or_default(), fragment)
}

fn finish(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    l4: &[u8],
    fragment: Option<Fragment>,
) -> Result<Packet, PacketError> {
    let mut key = FlowKey {
        proto,
        src,
        src_port: 0,
        dst,
        dst_port: 0,
    };
    let mut packet = Packet {
        key,
        tcp_flags: 0,
        class: Class::Flow,
        fragment,
    };
    if fragment.is_some_and(|f| !f.first) {
        // Later fragments carry no transport header; the filter matches
        // them to their first fragment by id.
        return Ok(packet);
    }
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let min = if proto == PROTO_TCP { 14 } else { 8 };
            if l4.len() < min {
                return Err(PacketError::BadTransport);
            }
            key.src_port = u16::from_be_bytes([l4[0], l4[1]]);
            key.dst_port = u16::from_be_bytes([l4[2], l4[3]]);
            if proto == PROTO_TCP {
                packet.tcp_flags = l4[13];
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            if l4.len() < 8 {
                return Err(PacketError::BadTransport);
            }
            let v6 = proto == PROTO_ICMPV6;
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            match (v6, l4[0]) {
                (false, 8) | (true, 128) => (key.src_port, key.dst_port) = (id, id),
                (false, 0) | (true, 129) => {
                    (key.src_port, key.dst_port) = (id, id);
                    packet.class = Class::Reply;
                }
                (false, 3 | 11 | 12) | (true, 1..=4) => {
                    let inner = parse_quoted(&l4[8..]).ok_or(PacketError::BadTransport)?;
                    packet.class = Class::Related(inner);
                }
                _ => {}
            }
        }
        _ => {}
    }
    packet.key = key;
    Ok(packet)
}

/// The flow key of the (possibly truncated) packet quoted in an ICMP error.
fn parse_quoted(b: &[u8]) -> Option<FlowKey> {
    let (proto, src, dst, l4) = match b.first()? >> 4 {
        4 => {
            let ihl = usize::from(b[0] & 0x0f) * 4;
            let src = IpAddr::V4(v4_addr(b, 12)?);
            let dst = IpAddr::V4(v4_addr(b, 16)?);
            (*b.get(9)?, src, dst, b.get(ihl..)?)
        }
        6 => {
            let src = IpAddr::V6(v6_addr(b, 8)?);
            let dst = IpAddr::V6(v6_addr(b, 24)?);
            (*b.get(6)?, src, dst, b.get(40..)?)
        }
        _ => return None,
    };
    let (src_port, dst_port) = match proto {
        PROTO_TCP | PROTO_UDP => (be16(l4, 0)?, be16(l4, 2)?),
        PROTO_ICMP | PROTO_ICMPV6 => {
            let id = be16(l4, 4)?;
            (id, id)
        }
        _ => (0, 0),
    };
    Some(FlowKey {
        proto,
        src,
        src_port,
        dst,
        dst_port,
    })
}

/// True for destinations the kernel talks to on its own (IPv6 router
/// solicitations, MLD, multicast, broadcast): dropped quietly, not counted.
pub fn is_local_noise(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast() || a.is_unicast_link_local(),
    }
}

/// Whether the local stack may answer `packet`, an IP packet being
/// written to the TUN device, before the write returns (an echo request's
/// reply, a SYN's SYN-ACK, data an ACK releases): all but an ICMP echo
/// reply and a UDP datagram, which only a process answers, later. A hint
/// for reading the TUN right after the write: a wrong guess costs one
/// system call (the answer is then found by the next wait), never a packet.
pub fn may_draw_answer(packet: &[u8]) -> bool {
    let (proto, l4) = match packet.first().map(|b| b >> 4) {
        Some(4) => (packet.get(9), packet.get(usize::from(packet[0] & 0xf) * 4)),
        Some(6) => (packet.get(6), packet.get(40)),
        _ => return true,
    };
    !matches!(
        (proto.copied(), l4.copied()),
        (Some(PROTO_UDP), _) | (Some(PROTO_ICMP), Some(0)) | (Some(PROTO_ICMPV6), Some(129))
    )
}

/// RFC 1071 one's-complement sum, folded, not yet inverted.
pub(crate) fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

pub(crate) fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(0, data))
}

/// Builds an ICMP (type 3 code 13) or ICMPv6 (type 1 code 1)
/// "administratively prohibited" error about `orig` into `out`, addressed to
/// the original sender, from the original destination (as a router would
/// answer; Linux drops packets arriving with one of its own addresses as
/// source unless `accept_local` is set). Returns false, leaving
/// `out` empty, when RFC 1122/4443 forbid an error (the original is itself
/// an ICMP error, a later fragment, or has a multicast/unspecified source).
pub fn build_prohibited(orig: &[u8], pkt: &Packet, out: &mut Vec<u8>) -> bool {
    out.clear();
    if matches!(pkt.class, Class::Related(_)) || pkt.fragment.is_some_and(|f| !f.first) {
        return false;
    }
    match (pkt.key.src, pkt.key.dst) {
        (IpAddr::V4(to), IpAddr::V4(from)) => {
            if to.is_unspecified() || to.is_multicast() || to.is_broadcast() {
                return false;
            }
            let quote = &orig[..orig.len().min(576 - 28)];
            let total = 28 + quote.len();
            out.extend_from_slice(&[
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0,
                0,
                64,
                PROTO_ICMP,
                0,
                0,
            ]);
            out.extend_from_slice(&from.octets());
            out.extend_from_slice(&to.octets());
            let c = checksum(&out[..20]);
            out[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&[3, 13, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(quote);
            let c = checksum(&out[20..]);
            out[22..24].copy_from_slice(&c.to_be_bytes());
            true
        }
        (IpAddr::V6(to), IpAddr::V6(from)) => {
            if to.is_unspecified() || to.is_multicast() {
                return false;
            }
            let quote = &orig[..orig.len().min(1280 - 48)];
            let plen = 8 + quote.len();
            out.extend_from_slice(&[
                0x60,
                0,
                0,
                0,
                (plen >> 8) as u8,
                plen as u8,
                PROTO_ICMPV6,
                64,
            ]);
            out.extend_from_slice(&from.octets());
            out.extend_from_slice(&to.octets());
            out.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(quote);
            let c = icmpv6_checksum(&out[8..40], &out[40..]);
            out[42..44].copy_from_slice(&c.to_be_bytes());
            true
        }
        _ => false,
    }
}

/// ICMPv6 checksum over the pseudo-header (`addrs` = source and destination,
/// 32 bytes) and the message.
pub fn icmpv6_checksum(addrs: &[u8], msg: &[u8]) -> u16 {
    let len = msg.len() as u32;
    let mut acc = sum16(0, addrs);
    acc += (len >> 16) + (len & 0xffff) + u32::from(PROTO_ICMPV6);
    fold(sum16(acc, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal IPv4 packet with an 8-byte transport header.
    pub(crate) fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let total = 20 + l4.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0,
            0,
            64,
            proto,
            0,
            0,
        ];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        let c = checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn only_echo_replies_and_udp_are_sure_to_draw_no_answer_from_the_stack() {
        use crate::craft;
        let pairs: [(IpAddr, IpAddr); 2] = [
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()),
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()),
        ];
        for (a, b) in pairs {
            assert!(may_draw_answer(&craft::echo_request(a, b, 1, 1)));
            assert!(!may_draw_answer(&craft::echo_reply(a, b, 1, 1)));
            assert!(!may_draw_answer(&craft::udp(a, 53, b, 5000, b"x")));
            assert!(may_draw_answer(&craft::tcp(a, 1, b, 2, TCP_SYN, &[])));
            assert!(may_draw_answer(&craft::tcp(a, 1, b, 2, TCP_ACK, b"data")));
        }
        // Anything it cannot read is assumed to be answered.
        assert!(may_draw_answer(&[]));
        assert!(may_draw_answer(&[0x45, 0, 0]));
        assert!(may_draw_answer(&[0x10; 40]));
    }

    #[test]
    fn parses_tcp_and_reverses() {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
        tcp[13] = TCP_SYN;
        let p = parse(&v4(PROTO_TCP, [10, 0, 0, 1], [10, 0, 0, 2], &tcp)).unwrap();
        assert_eq!(p.key.proto, PROTO_TCP);
        assert_eq!((p.key.src_port, p.key.dst_port), (40000, 8080));
        assert_eq!(p.tcp_flags, TCP_SYN);
        assert_eq!(p.key.reversed().reversed(), p.key);
        assert_eq!(p.key.reversed().dst_port, 40000);
    }

    #[test]
    fn echo_and_error_classes() {
        let req = parse(&v4(
            PROTO_ICMP,
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            &[8, 0, 0, 0, 0, 7, 0, 1],
        ))
        .unwrap();
        let rep = parse(&v4(
            PROTO_ICMP,
            [2, 2, 2, 2],
            [1, 1, 1, 1],
            &[0, 0, 0, 0, 0, 7, 0, 1],
        ))
        .unwrap();
        assert_eq!(req.class, Class::Flow);
        assert_eq!(rep.class, Class::Reply);
        assert_eq!(rep.key, req.key.reversed());
        let orig = v4(
            PROTO_UDP,
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            &[0, 53, 0, 54, 0, 8, 0, 0],
        );
        let mut err = vec![3, 3, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&orig);
        let e = parse(&v4(PROTO_ICMP, [2, 2, 2, 2], [1, 1, 1, 1], &err)).unwrap();
        assert_eq!(e.class, Class::Related(parse(&orig).unwrap().key));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse(&[]), Err(PacketError::TooShort));
        assert_eq!(parse(&[0x20; 40]), Err(PacketError::NotIp));
        let mut p = v4(PROTO_UDP, [1, 1, 1, 1], [2, 2, 2, 2], &[0; 8]);
        p[3] = 200; // longer than the buffer
        assert_eq!(parse(&p), Err(PacketError::BadHeader));
        let p = v4(PROTO_TCP, [1, 1, 1, 1], [2, 2, 2, 2], &[0; 8]);
        assert_eq!(parse(&p), Err(PacketError::BadTransport));
    }

    #[test]
    fn fragments() {
        let mut p = v4(
            PROTO_UDP,
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            &[0, 1, 0, 2, 0, 8, 0, 0],
        );
        p[6] = 0x20; // MF
        let f = parse(&p).unwrap();
        assert_eq!(f.fragment, Some(Fragment { id: 1, first: true }));
        assert_eq!(f.key.dst_port, 2);
        p[6] = 0;
        p[7] = 10; // offset 80, no ports
        let f = parse(&p).unwrap();
        assert_eq!(
            f.fragment,
            Some(Fragment {
                id: 1,
                first: false
            })
        );
        assert_eq!(f.key.dst_port, 0);
    }

    #[test]
    fn prohibited_v4_checksums() {
        let orig = v4(PROTO_TCP, [100, 64, 0, 1], [100, 64, 0, 9], &[0; 20]);
        let pkt = parse(&orig).unwrap();
        let mut out = Vec::new();
        assert!(build_prohibited(&orig, &pkt, &mut out));
        assert_eq!(checksum(&out[..20]), 0);
        assert_eq!(checksum(&out[20..]), 0);
        assert_eq!((out[20], out[21]), (3, 13));
        let back = parse(&out).unwrap();
        assert_eq!((back.key.src, back.key.dst), (pkt.key.dst, pkt.key.src));
        assert_eq!(back.class, Class::Related(pkt.key));
        // Never an error about an error.
        assert!(!build_prohibited(&out, &back, &mut Vec::new()));
    }

    #[test]
    fn prohibited_v6_checksum() {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::9".parse().unwrap();
        let mut orig = vec![0x60, 0, 0, 0, 0, 8, PROTO_UDP, 64];
        orig.extend_from_slice(&src.octets());
        orig.extend_from_slice(&dst.octets());
        orig.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
        let pkt = parse(&orig).unwrap();
        let mut out = Vec::new();
        assert!(build_prohibited(&orig, &pkt, &mut out));
        assert_eq!(icmpv6_checksum(&out[8..40], &out[40..]), 0);
        assert_eq!((out[40], out[41]), (1, 1));
        let back = parse(&out).unwrap();
        assert_eq!(back.key.src, IpAddr::V6(dst));
        assert_eq!(back.class, Class::Related(pkt.key));
    }
}
