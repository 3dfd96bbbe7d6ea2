//! Plans the TUN writes of a batch of decrypted packets (sans-IO: bytes in,
//! a list of writes out). Consecutive TCP segments of one flow, which is
//! how a peer's TSO bursts arrive, become one super-packet with a virtio
//! GSO header: the kernel takes it in one write and passes it up its stack
//! as one unit, so the TCP receive path runs once per ~45 segments instead
//! of once per segment. The appended segments are not copied: a write is
//! the head packet (headers patched to describe the whole) followed by the
//! payloads of the others, handed to `writev` as they are.
//!
//! Checksums: every TCP and UDP packet is written as "checksum partial" (the
//! checksum field holds only the pseudo-header sum, the virtio header says
//! where the sum starts), which the kernel accepts on local delivery without
//! summing the payload. Nothing is lost by not verifying: the AEAD has
//! already authenticated every byte, which is also why the kernel's own
//! WireGuard marks decrypted packets as needing no checksum check. Partial
//! rather than "unnecessary" because a TUN write cannot say the latter, and
//! a partial sum is still completed correctly should the packet be
//! forwarded.
//!
//! Order: a flow's segments are only ever appended to that flow's newest
//! write, and a write is emitted at the position of its first packet, so
//! the packets of one flow keep their order; only packets of different
//! flows can pass each other.

use crate::packet::{PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_PSH, checksum, fold, sum16};

/// Size of the `virtio_net_hdr` in front of every write on an offload TUN.
pub const VNET_HDR_LEN: usize = 10;

/// `virtio_net_hdr` values (linux/virtio_net.h), for writes here and
/// reads in `tunio.rs`.
pub(crate) const F_NEEDS_CSUM: u8 = 1;
pub(crate) const GSO_NONE: u8 = 0;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_TCPV6: u8 = 4;
pub(crate) const GSO_UDP_L4: u8 = 5;
pub(crate) const GSO_ECN: u8 = 0x80;
/// Largest super-packet (IP total length).
const MAX_LEN: usize = 65_535;
/// Flows that can be coalesced at the same time in one batch; a batch from
/// one peer rarely interleaves more.
const MAX_OPEN: usize = 8;
const END: u32 = u32::MAX;

/// One TUN write: the `vnet` header, the head packet whole, then every
/// further segment without its first `skip` bytes (its IP and TCP headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub head: usize,
    pub vnet: [u8; VNET_HDR_LEN],
    pub skip: usize,
    /// Packets in this write (1 = the head alone).
    pub segments: usize,
    tail: u32,
    len: usize,
    psh: bool,
    /// The head's layout when it is TCP (parsed once, in `plan`).
    tcp: Option<Tcp>,
}

/// A TCP segment's layout, for any TCP packet whose lengths are consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tcp {
    v6: bool,
    iph: usize,
    tcph: usize,
    seq: u32,
    payload: usize,
    flags: u8,
}

impl Tcp {
    /// A segment that may be part of a super-packet: data with ACK (and at
    /// most PSH) set. SYN, FIN, RST, URG, ECE/CWR and pure ACKs go alone.
    fn mergeable(&self) -> bool {
        self.payload > 0 && (self.flags == TCP_ACK || self.flags == TCP_ACK | TCP_PSH)
    }
}

/// A flow's newest write, still open for appending.
#[derive(Debug)]
struct Open {
    write: usize,
    tcp: Tcp,
    next_seq: u32,
    gso: usize,
}

/// Reusable planner; one per writing thread.
#[derive(Debug, Default)]
pub struct Coalescer {
    writes: Vec<Write>,
    /// Per packet: the next packet of the same write, or `END`.
    next: Vec<u32>,
    open: Vec<Open>,
}

impl Coalescer {
    /// Plans the writes for `packets` (in arrival order) and patches the
    /// head packets' headers in place. The plan ([`Coalescer::writes`])
    /// holds until the next call.
    pub fn plan(&mut self, packets: &mut [Vec<u8>]) {
        self.writes.clear();
        self.open.clear();
        self.next.clear();
        self.next.resize(packets.len(), END);
        for i in 0..packets.len() {
            let p = &packets[i];
            if let Some(t) = tcp(p) {
                if self.try_append(packets, i, &t) {
                    continue;
                }
                let w = self.push(i, p.len(), Some(t));
                // Nothing may follow a segment with PSH.
                if t.mergeable() && t.flags & TCP_PSH == 0 {
                    if self.open.len() == MAX_OPEN {
                        self.open.remove(0);
                    }
                    self.open.push(Open {
                        write: w,
                        tcp: t,
                        next_seq: t.seq.wrapping_add(t.payload as u32),
                        gso: t.payload,
                    });
                }
            } else {
                self.push(i, p.len(), None);
            }
        }
        for w in &mut self.writes {
            finish(w, &mut packets[w.head]);
        }
    }

    /// The writes planned by the last [`Coalescer::plan`], in order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    fn push(&mut self, head: usize, len: usize, tcp: Option<Tcp>) -> usize {
        self.writes.push(Write {
            head,
            vnet: [0; VNET_HDR_LEN],
            skip: 0,
            segments: 1,
            tail: head as u32,
            len,
            psh: false,
            tcp,
        });
        self.writes.len() - 1
    }

    /// Appends TCP packet `i` to its flow's open write if it continues it.
    /// A packet of the flow that does not continue it closes that write,
    /// so nothing later can be appended ahead of this packet.
    fn try_append(&mut self, packets: &[Vec<u8>], i: usize, t: &Tcp) -> bool {
        let p = &packets[i];
        let Some(k) = self
            .open
            .iter()
            .position(|o| same_flow(&packets[self.writes[o.write].head], &o.tcp, p, t))
        else {
            return false;
        };
        let o = &self.open[k];
        let w = &self.writes[o.write];
        let head = &packets[w.head];
        let fits = t.mergeable()
            && t.seq == o.next_seq
            && t.payload <= o.gso
            && w.len + t.payload <= MAX_LEN
            && same_headers(head, &o.tcp, p, t);
        if !fits {
            self.open.remove(k);
            return false;
        }
        let o = &mut self.open[k];
        let w = &mut self.writes[o.write];
        self.next[w.tail as usize] = i as u32;
        w.tail = i as u32;
        w.segments += 1;
        w.len += t.payload;
        o.next_seq = o.next_seq.wrapping_add(t.payload as u32);
        if t.flags & TCP_PSH != 0 {
            w.psh = true;
        }
        // Only the last segment may be short or carry PSH.
        if t.payload < o.gso || w.psh {
            self.open.remove(k);
        }
        true
    }

    /// The byte slices of write `w`, in order: the head packet whole, then
    /// each further segment's payload.
    pub fn parts<'a>(
        &'a self,
        w: &Write,
        packets: &'a [Vec<u8>],
    ) -> impl Iterator<Item = &'a [u8]> {
        let mut at = w.head as u32;
        let mut first = true;
        std::iter::from_fn(move || {
            if at == END {
                return None;
            }
            let p = &packets[at as usize];
            at = self.next[at as usize];
            let skip = if first { 0 } else { w.skip };
            first = false;
            Some(&p[skip..])
        })
    }
}

/// The virtio header for one packet written on its own (interactive
/// traffic), with its checksum made partial as [`Coalescer::plan`] does for
/// a batch of one, without the planner's bookkeeping: fewer cache lines
/// touched per packet after an idle gap.
pub fn lone(p: &mut [u8]) -> [u8; VNET_HDR_LEN] {
    let mut w = Write {
        head: 0,
        vnet: [0; VNET_HDR_LEN],
        skip: 0,
        segments: 1,
        tail: 0,
        len: p.len(),
        psh: false,
        tcp: tcp(p),
    };
    finish(&mut w, p);
    w.vnet
}

/// Parses a TCP packet (no IPv6 extension headers, not a fragment).
fn tcp(p: &[u8]) -> Option<Tcp> {
    let (v6, iph) = l4(p, PROTO_TCP)?;
    let tcph = usize::from(*p.get(iph + 12)? >> 4) * 4;
    if tcph < 20 || p.len() < iph + tcph {
        return None;
    }
    let seq = u32::from_be_bytes(p[iph + 4..iph + 8].try_into().ok()?);
    Some(Tcp {
        v6,
        iph,
        tcph,
        seq,
        payload: p.len() - iph - tcph,
        flags: p[iph + 13],
    })
}

/// For an IP packet carrying `proto` directly, whole and unfragmented,
/// whose length fields match its size: (is IPv6, IP header length).
fn l4(p: &[u8], proto: u8) -> Option<(bool, usize)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let iph = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
            (iph >= 20 && total == p.len() && p.len() >= iph && !fragment && p[9] == proto)
                .then_some((false, iph))
        }
        6 if p.len() >= 40 => {
            let payload = usize::from(u16::from_be_bytes([p[4], p[5]]));
            (payload == p.len() - 40 && p[6] == proto).then_some((true, 40))
        }
        _ => None,
    }
}

/// Same addresses and ports, in the same direction.
fn same_flow(a: &[u8], ta: &Tcp, b: &[u8], tb: &Tcp) -> bool {
    if ta.v6 != tb.v6 {
        return false;
    }
    let addrs = if ta.v6 { 8..40 } else { 12..20 };
    a[addrs.clone()] == b[addrs] && a[ta.iph..ta.iph + 4] == b[tb.iph..tb.iph + 4]
}

/// Whether `b` can follow `a` in one super-packet: every header field the
/// kernel's GRO compares is equal (IP: TOS/traffic class, flow label, TTL,
/// DF; TCP: ACK number, window, options), so nothing a segment says is
/// lost by keeping only the head's headers.
fn same_headers(a: &[u8], ta: &Tcp, b: &[u8], tb: &Tcp) -> bool {
    if ta.iph != tb.iph || ta.tcph != tb.tcph {
        return false;
    }
    let ip = if ta.v6 {
        a[0..4] == b[0..4] && a[7] == b[7]
    } else {
        a[1] == b[1] && a[6] == b[6] && a[8] == b[8] && a[20..ta.iph] == b[20..tb.iph]
    };
    let (x, y) = (&a[ta.iph..ta.iph + ta.tcph], &b[tb.iph..tb.iph + tb.tcph]);
    ip && x[8..13] == y[8..13] && x[14..16] == y[14..16] && x[20..] == y[20..]
}

/// Patches the head packet to describe the whole write and fills in the
/// virtio header.
fn finish(w: &mut Write, p: &mut [u8]) {
    if w.segments > 1 {
        // Only runs of mergeable TCP segments have more than one packet.
        let Some(t) = w.tcp else { return };
        if t.v6 {
            let payload = (w.len - 40) as u16;
            p[4..6].copy_from_slice(&payload.to_be_bytes());
        } else {
            p[2..4].copy_from_slice(&(w.len as u16).to_be_bytes());
            p[10..12].fill(0);
            let c = checksum(&p[..t.iph]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        if w.psh {
            p[t.iph + 13] |= TCP_PSH;
        }
        let l4_len = w.len - t.iph;
        partial(p, t.v6, t.iph, PROTO_TCP, l4_len, 16);
        w.skip = t.iph + t.tcph;
        let gso = (p.len() - w.skip) as u16;
        w.vnet = vnet(
            F_NEEDS_CSUM,
            if t.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            w.skip,
            gso,
            t.iph,
            16,
        );
    } else if let Some(t) = w.tcp {
        partial(p, t.v6, t.iph, PROTO_TCP, p.len() - t.iph, 16);
        w.vnet = vnet(F_NEEDS_CSUM, 0, t.iph + t.tcph, 0, t.iph, 16);
    } else if let Some((v6, iph)) = l4(p, PROTO_UDP) {
        // An IPv4 UDP checksum of zero means "none": leave it so.
        if p.len() >= iph + 8 && (v6 || p[iph + 6..iph + 8] != [0, 0]) {
            partial(p, v6, iph, PROTO_UDP, p.len() - iph, 6);
            w.vnet = vnet(F_NEEDS_CSUM, 0, iph + 8, 0, iph, 6);
        }
    }
}

/// Writes the pseudo-header sum (not inverted) into the checksum field at
/// `iph + at`: the kernel adds the rest when it needs it.
fn partial(p: &mut [u8], v6: bool, iph: usize, proto: u8, l4_len: usize, at: usize) {
    let addrs = if v6 { &p[8..40] } else { &p[12..20] };
    let pseudo = sum16(0, addrs) + u32::from(proto) + l4_len as u32;
    let sum = !fold(pseudo);
    p[iph + at..iph + at + 2].copy_from_slice(&sum.to_be_bytes());
}

fn vnet(
    flags: u8,
    gso_type: u8,
    hdr_len: usize,
    gso_size: u16,
    start: usize,
    offset: u16,
) -> [u8; 10] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&(hdr_len as u16).to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&(start as u16).to_le_bytes());
    h[8..10].copy_from_slice(&offset.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::craft;
    use crate::packet::PROTO_ICMP;

    const A4: &str = "100.80.0.1";
    const B4: &str = "100.80.0.2";
    const A6: &str = "fd5e:6d00::1";
    const B6: &str = "fd5e:6d00::2";

    struct Seg<'a> {
        src: &'a str,
        dst: &'a str,
        sport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        len: usize,
    }

    fn seg(src: &str, dst: &str, seq: u32, len: usize) -> Seg<'static> {
        // Leak-free: tests only use the constants above.
        let pick =
            |s: &str| -> &'static str { [A4, B4, A6, B6].into_iter().find(|c| *c == s).unwrap() };
        Seg {
            src: pick(src),
            dst: pick(dst),
            sport: 40000,
            seq,
            ack: 7,
            flags: TCP_ACK,
            len,
        }
    }

    fn build(s: &Seg) -> Vec<u8> {
        let mut l4 = vec![0u8; 32];
        l4[0..2].copy_from_slice(&s.sport.to_be_bytes());
        l4[2..4].copy_from_slice(&5201u16.to_be_bytes());
        l4[4..8].copy_from_slice(&s.seq.to_be_bytes());
        l4[8..12].copy_from_slice(&s.ack.to_be_bytes());
        l4[12] = 8 << 4; // 32 bytes: a timestamp option
        l4[13] = s.flags;
        l4[14..16].copy_from_slice(&512u16.to_be_bytes());
        l4[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        l4.extend((0..s.len).map(|i| (s.seq as usize + i) as u8));
        let (src, dst): (IpAddr, IpAddr) = (s.src.parse().unwrap(), s.dst.parse().unwrap());
        craft::ip(src, dst, PROTO_TCP, l4, Some(16))
    }

    fn bytes(c: &Coalescer, w: &Write, packets: &[Vec<u8>]) -> Vec<u8> {
        c.parts(w, packets).flatten().copied().collect()
    }

    /// What the kernel does with a partial checksum: sums from
    /// `csum_start` and stores the result at `csum_start + csum_offset`.
    fn complete(w: &Write, mut p: Vec<u8>) -> Vec<u8> {
        if w.vnet[0] & F_NEEDS_CSUM != 0 {
            let start = usize::from(u16::from_le_bytes([w.vnet[6], w.vnet[7]]));
            let off = usize::from(u16::from_le_bytes([w.vnet[8], w.vnet[9]]));
            let c = fold(sum16(0, &p[start..]));
            p[start + off..start + off + 2].copy_from_slice(&c.to_be_bytes());
        }
        p
    }

    /// Whether the transport checksum of a whole packet verifies.
    fn l4_valid(p: &[u8], proto: u8) -> bool {
        let (v6, iph) = l4(p, proto).expect("a whole TCP/UDP packet");
        let addrs = if v6 { &p[8..40] } else { &p[12..20] };
        let pseudo = sum16(0, addrs) + u32::from(proto) + (p.len() - iph) as u32;
        fold(sum16(pseudo, &p[iph..])) == 0
    }

    /// The kernel's segmentation of a super-packet, to compare with what
    /// the peer sent.
    fn resegment(w: &Write, sup: &[u8]) -> Vec<Vec<u8>> {
        let gso = usize::from(u16::from_le_bytes([w.vnet[4], w.vnet[5]]));
        let t = tcp_prefix(sup);
        let hdr = &sup[..w.skip];
        let mut out = Vec::new();
        let mut seq = t.seq;
        for (k, chunk) in sup[w.skip..].chunks(gso).enumerate() {
            let mut p = hdr.to_vec();
            p.extend_from_slice(chunk);
            if t.v6 {
                let payload = (p.len() - 40) as u16;
                p[4..6].copy_from_slice(&payload.to_be_bytes());
            } else {
                let total = p.len() as u16;
                p[2..4].copy_from_slice(&total.to_be_bytes());
                p[10..12].fill(0);
                let c = checksum(&p[..t.iph]);
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
            p[t.iph + 4..t.iph + 8].copy_from_slice(&seq.to_be_bytes());
            if k + 1 < sup[w.skip..].len().div_ceil(gso) {
                p[t.iph + 13] &= !TCP_PSH;
            }
            seq = seq.wrapping_add(chunk.len() as u32);
            p[t.iph + 16..t.iph + 18].fill(0);
            let addrs = if t.v6 { &p[8..40] } else { &p[12..20] };
            let pseudo = sum16(0, addrs) + u32::from(PROTO_TCP) + (p.len() - t.iph) as u32;
            let c = fold(sum16(pseudo, &p[t.iph..]));
            p[t.iph + 16..t.iph + 18].copy_from_slice(&c.to_be_bytes());
            out.push(p);
        }
        out
    }

    fn tcp_prefix(p: &[u8]) -> Tcp {
        let v6 = p[0] >> 4 == 6;
        let iph = if v6 { 40 } else { usize::from(p[0] & 0x0f) * 4 };
        Tcp {
            v6,
            iph,
            tcph: usize::from(p[iph + 12] >> 4) * 4,
            seq: u32::from_be_bytes(p[iph + 4..iph + 8].try_into().unwrap()),
            payload: 0,
            flags: p[iph + 13],
        }
    }

    fn run(segs: &[Seg]) -> (Coalescer, Vec<Vec<u8>>, Vec<Write>) {
        let mut packets: Vec<Vec<u8>> = segs.iter().map(build).collect();
        let mut c = Coalescer::default();
        c.plan(&mut packets);
        let writes = c.writes().to_vec();
        (c, packets, writes)
    }

    #[test]
    fn a_burst_of_one_flow_is_one_super_packet_that_resegments_to_the_original() {
        for (a, b) in [(A4, B4), (A6, B6)] {
            let mut segs: Vec<Seg> = (0..10).map(|k| seg(a, b, 1000 + k * 1388, 1388)).collect();
            segs.push(seg(a, b, 1000 + 10 * 1388, 500));
            segs[10].flags = TCP_ACK | TCP_PSH;
            let originals: Vec<Vec<u8>> = segs.iter().map(build).collect();
            let (c, packets, writes) = run(&segs);
            assert_eq!(writes.len(), 1, "{a}");
            let w = &writes[0];
            assert_eq!(w.segments, 11);
            let sup = bytes(&c, w, &packets);
            let gso_type = if a == A4 { GSO_TCPV4 } else { GSO_TCPV6 };
            assert_eq!(w.vnet[..2], [F_NEEDS_CSUM, gso_type]);
            assert_eq!(u16::from_le_bytes([w.vnet[4], w.vnet[5]]), 1388);
            // The length fields describe the whole, and the IPv4 header
            // checksum is valid.
            assert_eq!(l4(&sup, PROTO_TCP).map(|(v6, _)| v6), Some(a == A6));
            if a == A4 {
                assert_eq!(checksum(&sup[..20]), 0);
            }
            assert!(l4_valid(&complete(w, sup.clone()), PROTO_TCP));
            assert_eq!(resegment(w, &sup), originals, "{a}");
        }
    }

    #[test]
    fn interleaved_flows_coalesce_separately_in_order_of_first_packet() {
        let mut segs = Vec::new();
        for k in 0..4 {
            segs.push(seg(A4, B4, 100 + k * 1000, 1000));
            let mut other = seg(A4, B4, 9000 + k * 1000, 1000);
            other.sport = 40001;
            segs.push(other);
        }
        let (_, _, writes) = run(&segs);
        let shape: Vec<(usize, usize)> = writes.iter().map(|w| (w.head, w.segments)).collect();
        assert_eq!(shape, [(0, 4), (1, 4)]);
    }

    #[test]
    fn anything_that_does_not_continue_a_flow_starts_a_new_write() {
        // A gap in sequence numbers, a changed ACK number, a changed window,
        // different TTL: each starts a new write.
        let mut segs = vec![seg(A4, B4, 0, 1000), seg(A4, B4, 2000, 1000)];
        let mut acked = seg(A4, B4, 3000, 1000);
        acked.ack = 8;
        segs.push(acked);
        let (_, _, writes) = run(&segs);
        assert_eq!(
            writes.iter().map(|w| w.segments).collect::<Vec<_>>(),
            [1, 1, 1]
        );

        let mut packets: Vec<Vec<u8>> = [seg(A4, B4, 0, 1000), seg(A4, B4, 1000, 1000)]
            .iter()
            .map(build)
            .collect();
        packets[1][8] = 63; // TTL
        let mut c = Coalescer::default();
        c.plan(&mut packets);
        assert_eq!(c.writes().len(), 2);
    }

    #[test]
    fn a_short_or_pushed_segment_ends_a_write_and_a_larger_one_cannot_follow() {
        let mut segs = vec![
            seg(A4, B4, 0, 1000),
            seg(A4, B4, 1000, 600),
            seg(A4, B4, 1600, 1000),
        ];
        let (_, _, writes) = run(&segs);
        assert_eq!(
            writes.iter().map(|w| w.segments).collect::<Vec<_>>(),
            [2, 1]
        );

        segs = vec![
            seg(A4, B4, 0, 1000),
            seg(A4, B4, 1000, 1000),
            seg(A4, B4, 2000, 1000),
        ];
        segs[0].flags |= TCP_PSH;
        let (_, _, writes) = run(&segs);
        assert_eq!(
            writes.iter().map(|w| w.segments).collect::<Vec<_>>(),
            [1, 2]
        );

        segs = vec![seg(A4, B4, 0, 600), seg(A4, B4, 600, 1000)];
        let (_, _, writes) = run(&segs);
        assert_eq!(
            writes.iter().map(|w| w.segments).collect::<Vec<_>>(),
            [1, 1]
        );
    }

    #[test]
    fn a_packet_of_the_flow_that_cannot_join_keeps_later_segments_behind_it() {
        // data, a pure ACK of the same flow, then data that would continue
        // the first write: it must not overtake the ACK.
        let segs = [
            seg(A4, B4, 0, 1000),
            seg(A4, B4, 1000, 0),
            seg(A4, B4, 1000, 1000),
        ];
        let (_, _, writes) = run(&segs);
        let shape: Vec<(usize, usize)> = writes.iter().map(|w| (w.head, w.segments)).collect();
        assert_eq!(shape, [(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn super_packets_stay_within_64k() {
        let segs: Vec<Seg> = (0..60).map(|k| seg(A4, B4, k * 1388, 1388)).collect();
        let (_, _, writes) = run(&segs);
        assert!(writes.len() >= 2);
        assert_eq!(writes.iter().map(|w| w.segments).sum::<usize>(), 60);
        assert!(writes.iter().all(|w| w.len <= MAX_LEN));
    }

    #[test]
    fn single_packets_get_a_partial_checksum_or_none() {
        let src: IpAddr = A4.parse().unwrap();
        let dst: IpAddr = B4.parse().unwrap();
        let mut udp = vec![0u8; 8];
        udp[4..6].copy_from_slice(&108u16.to_be_bytes());
        udp.extend([9u8; 100]);
        let with_sum = craft::ip(src, dst, PROTO_UDP, udp.clone(), Some(6));
        let without = craft::ip(src, dst, PROTO_UDP, udp, None);
        let icmp = craft::ip(src, dst, PROTO_ICMP, vec![8, 0, 0, 0, 0, 1, 0, 1], Some(2));
        let syn = {
            let mut s = seg(A6, B6, 5, 0);
            s.flags = 0x02;
            build(&s)
        };
        let mut packets = vec![with_sum.clone(), without.clone(), icmp.clone(), syn.clone()];
        let mut c = Coalescer::default();
        c.plan(&mut packets);
        let writes = c.writes().to_vec();
        assert_eq!(writes.len(), 4);
        assert_eq!(writes[0].vnet[0], F_NEEDS_CSUM);
        assert!(l4_valid(
            &complete(&writes[0], packets[0].clone()),
            PROTO_UDP
        ));
        assert_eq!((writes[1].vnet, &packets[1]), ([0; 10], &without));
        assert_eq!((writes[2].vnet, &packets[2]), ([0; 10], &icmp));
        assert_eq!(writes[3].vnet[..2], [F_NEEDS_CSUM, 0]);
        assert_eq!(complete(&writes[3], packets[3].clone()), syn);
        // Written alone, each gets the same header and bytes.
        for (w, (planned, orig)) in writes
            .iter()
            .zip(packets.iter().zip([with_sum, without, icmp, syn]))
        {
            let mut p = orig;
            assert_eq!((lone(&mut p), &p), (w.vnet, planned));
        }
    }

    proptest! {
        /// A packet written alone gets what a batch of one would: the same
        /// virtio header and the same patched bytes (any bytes, any TCP).
        #[test]
        fn a_lone_packet_is_planned_like_a_batch_of_one(
            garbage in proptest::collection::vec(any::<u8>(), 0..80),
            step in 0u32..6,
            len in 0usize..1400,
            flags in any::<u8>(),
            v6 in any::<bool>(),
            which in 0u8..2,
        ) {
            let p = if which == 0 {
                garbage
            } else {
                let (a, b) = if v6 { (A6, B6) } else { (A4, B4) };
                let mut s = seg(a, b, step * 1000, len);
                s.flags = flags;
                build(&s)
            };
            let mut batch = vec![p.clone()];
            let mut c = Coalescer::default();
            c.plan(&mut batch);
            let mut alone = p;
            let vnet = lone(&mut alone);
            prop_assert_eq!((vnet, &alone), (c.writes()[0].vnet, &batch[0]));
        }

        /// Any bytes: no panic, and every packet is written exactly once,
        /// each flow's packets in their original order.
        #[test]
        fn every_packet_is_written_once_in_order(
            picks in proptest::collection::vec((0u8..4, 0u32..6, 0usize..3, any::<bool>()), 0..40),
            garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..5),
        ) {
            let mut packets: Vec<Vec<u8>> = picks
                .iter()
                .map(|&(flow, step, size, v6)| {
                    let (a, b) = if v6 { (A6, B6) } else { (A4, B4) };
                    let mut s = seg(a, b, step * 1000, [1000, 400, 0][size]);
                    s.sport = 40000 + u16::from(flow);
                    build(&s)
                })
                .collect();
            packets.extend(garbage);
            let n = packets.len();
            let mut c = Coalescer::default();
            c.plan(&mut packets);
            let writes = c.writes().to_vec();
            let mut seen = Vec::new();
            for w in &writes {
                let mut at = w.head as u32;
                while at != END {
                    seen.push(at as usize);
                    at = c.next[at as usize];
                }
                prop_assert_eq!(c.parts(w, &packets).count(), w.segments);
            }
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            // Per flow (source port and family), the order of packets in
            // the output is their input order.
            for flow in (0..4u8).flat_map(|p| [(p, false), (p, true)]) {
                let order: Vec<usize> = seen
                    .iter()
                    .copied()
                    .filter(|&i| i < picks.len() && (picks[i].0, picks[i].3) == flow)
                    .collect();
                let mut expect = order.clone();
                expect.sort_unstable();
                prop_assert_eq!(order, expect);
            }
        }
    }
}
