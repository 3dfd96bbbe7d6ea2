//! The core's work for one idle ping round trip through two nodes (A
//! encrypts the request, B decrypts it, B encrypts the kernel's reply, A
//! decrypts it), warm and with the caches evicted first.
//!
//! Why: segmesh's idle round trip in the shared harness is a little slower
//! than boringtun-cli's, with a similar instruction count per packet
//! (docs/benchmarks.md, "Idle round trip"). This bench keeps the core's
//! share of a round trip measured, warm and cold (a write sweep over 64 MiB
//! before every round trip evicts caches and TLB). It does not reproduce
//! what a VM adds after its vCPU sat idle (there, one pass of the core took
//! 9-13 us, here 1-2 us cold), and the IO layer (system calls, batches) is
//! not in it.
//!
//! `cargo bench -p segmesh-node --bench cold_path`

// Benchmark setup: a panic is the report; the bench is a driver and times
// itself with the clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{Sim, kernel_answer};
use criterion::{Criterion, criterion_group, criterion_main};
use segmesh_node::craft;

/// Larger than any last-level cache these machines have.
const EVICT: usize = 64 << 20;

/// Two nodes with a session, the request A's local process sends and the
/// reply B's kernel gives (made once: the kernel's work is not measured).
fn setup() -> (Sim, Vec<u8>, Vec<u8>) {
    let mut s = Sim::new(&["a", "b"], 1, 0.0);
    s.apply(&[("a", "b", &["icmp"])]);
    let (a, b) = (s.addr("a", false), s.addr("b", false));
    let ping = craft::echo_request(a, b, 7, 1);
    s.send("a", &ping);
    s.run(Duration::from_secs(1));
    assert!(!s.take_tun("a").is_empty(), "no reply through the tunnel");
    let answer = kernel_answer(&s.take_tun("b")[0]).expect("echo reply");
    (s, ping, answer)
}

/// One leg: `from`'s local process sends `packet`, the datagram goes
/// straight to `to`, which decrypts it; returns what `to` writes to its
/// TUN. The datagram's buffer goes back to its pool.
fn leg(s: &mut Sim, from: usize, to: usize, packet: &[u8], now: Instant) -> Vec<u8> {
    let src = s.nodes[from].udp;
    s.nodes[from].core.handle_tun(now, packet);
    let d = s.nodes[from].core.poll_transmit().expect("datagram");
    s.nodes[to].core.handle_udp(now, src, &d.payload);
    s.nodes[from].core.recycle(d.payload);
    s.nodes[to]
        .core
        .poll_tun_write()
        .expect("packet through the tunnel")
}

/// One round trip through both cores: the request A -> B, the reply back.
fn round_trip(s: &mut Sim, ping: &[u8], answer: &[u8], now: Instant) {
    let (ia, ib) = (s.idx("a"), s.idx("b"));
    let inner = leg(s, ia, ib, ping, now);
    s.nodes[ib].core.recycle(black_box(inner));
    let back = leg(s, ib, ia, answer, now);
    s.nodes[ia].core.recycle(black_box(back));
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ping_round_trip");
    for cold in [false, true] {
        let (mut s, ping, answer) = setup();
        let mut sweep = vec![0u8; EVICT];
        let mut now = s.now;
        g.bench_function(if cold { "cold" } else { "warm" }, |bch| {
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    if cold {
                        for b in sweep.iter_mut().step_by(64) {
                            *b = b.wrapping_add(i as u8);
                        }
                        black_box(&sweep);
                    }
                    // Virtual time moves on, but stays well inside the
                    // session's lifetime whatever the iteration count.
                    now += Duration::from_nanos(100);
                    let t0 = Instant::now();
                    round_trip(&mut s, &ping, &answer, now);
                    total += t0.elapsed();
                }
                total
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
