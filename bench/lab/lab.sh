#!/usr/bin/env bash
# lab.sh - the benchmark harness's two namespaces with one tunnel left up,
# for measuring the idle round trip at leisure (root only; traffic stays
# inside the namespaces mb-a and mb-b that the harness's netns.sh makes).
#
#   lab.sh up IMPL          bring up the namespaces and one implementation
#                           (segmesh, boringtun-1t, wireguard-go, ...)
#   lab.sh down             stop it and remove the namespaces
#   lab.sh pids             the tunnel daemons' PIDs: node A's, node B's
#   lab.sh rtt [N]          N pings (1000) 10 ms apart: p50/p90/p99/avg in ms
#   lab.sh ab R N BIN...    R rounds of N pings for each segmesh-node binary
#                           (and boringtun-1t when BT=1), interleaved, the
#                           order reversed every other round
#   lab.sh coldmem          coldmem.c: what one cache line costs after a
#                           10 ms idle gap, on a page the TLB still maps or
#                           on a fresh one, 4 KiB or 2 MiB pages (gcc)
#   lab.sh coldrecv [R]     R runs (3) of coldrecv.c: what receiving one
#                           queued datagram costs 10 ms after the last
#                           call, by system call (recvfrom, recvmsg,
#                           recvmmsg) and header layout (gcc)
#   lab.sh coldclock        coldclock.c: what one clock_gettime costs 10 ms
#                           after the last, against one at once (gcc)
#   lab.sh coldsend [R]     R runs (3) of coldsend.c on the bare veth: the
#                           cost of one UDP send 10 ms after the last, from
#                           a connected and an unconnected socket (gcc)
#
# Env: MB_BENCH (the harness, /work/shared/bench), SEGMESH_BIN (the node
# binary, target/release/segmesh-node), LAB_DIR (state, /tmp/segmesh-lab),
# LAB_UP_WAIT (seconds `up` waits for the first ping, 30; footprint.sh
# gives 120, since a handshake under valgrind can take longer on a slow host),
# LAB_FIRST (a or b: which node pings first, so starts the handshake; a).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
B=${MB_BENCH:-/work/shared/bench}
LAB=${LAB_DIR:-/tmp/segmesh-lab}
export SEGMESH_BIN=${SEGMESH_BIN:-$REPO/target/release/segmesh-node}

up() {
    local impl=$1 f="" d
    # shellcheck source=/dev/null
    source "$B/lib.sh"
    export NS_A=mb-a NS_B=mb-b UNDER_A=10.231.0.1 UNDER_B=10.231.0.2
    export OVER_A=10.232.0.1 OVER_B=10.232.0.2 OVER_PREFIX=24
    export CACHE=$HOME/.cache/mesh-bench MB_INSTALL=1 IMPL_NAME=$impl
    "$B/netns.sh" up > /dev/null
    export WORK=$LAB/$impl
    rm -rf "$WORK" && mkdir -p "$WORK"
    for d in $REPO/bench $B/impls; do
        [ -f "$d/impl-$impl.sh" ] && { f=$d/impl-$impl.sh; break; }
    done
    [ -n "$f" ] || die "no plugin impl-$impl.sh"
    IMPL_DIR=$(dirname "$f")
    export IMPL_DIR
    impl_install() { :; }
    # shellcheck source=/dev/null
    source "$f"
    impl_install
    impl_up
    if [ "${LAB_FIRST:-a}" = b ]; then
        # B's first ping makes B the handshake's initiator.
        wait_until "${LAB_UP_WAIT:-30}" in_b ping -n -c 1 -W 1 "$OVER_A" || die "no ping from B"
    fi
    wait_until "${LAB_UP_WAIT:-30}" in_a ping -n -c 1 -W 1 "$OVER_B" || die "no ping through the tunnel"
    wait_until 10 in_b ping -n -c 1 -W 1 "$OVER_A" || die "no ping back"
    echo "up: $impl (logs in $WORK)"
}

down() {
    local w
    # shellcheck source=/dev/null
    source "$B/lib.sh"
    for w in "$LAB"/*/; do
        [ -d "$w" ] && WORK=$w stop_all_in "$w" 2> /dev/null
    done
    "$B/netns.sh" down > /dev/null 2>&1 || true
    rm -rf "$LAB"
}

pids() {
    cat "$LAB"/*/daemons 2> /dev/null | awk '{ print $1 }' | paste -sd' '
}

rtt() {
    ip netns exec mb-a ping -n -c "${1:-1000}" -i 0.01 -W 1 10.232.0.2 |
        awk -F'time=' '/time=/ { split($2, a, " "); print a[1] }' | sort -n |
        awk '{ v[NR] = $1; s += $1 }
             END { if (NR == 0) { print "no replies"; exit 1 }
                   printf "p50 %.3f p90 %.3f p99 %.3f avg %.3f n %d\n",
                          v[int(NR * .5 + .5)], v[int(NR * .9 + .5)], v[int(NR * .99 + .5)], s / NR, NR }'
}

ab() {
    local rounds=$1 n=$2 r b order; shift 2
    for r in $(seq 1 "$rounds"); do
        # Every other round in reverse order: the host drifts over minutes,
        # and a fixed order would charge that drift to whichever runs last.
        order=("$@" ${BT:+boringtun-1t})
        if [ $((r % 2)) = 0 ]; then
            mapfile -t order < <(printf '%s\n' "${order[@]}" | tac)
        fi
        for b in "${order[@]}"; do
            down
            if [ "$b" = boringtun-1t ]; then up boringtun-1t > /dev/null
            else SEGMESH_BIN=$b up segmesh > /dev/null; fi
            echo "$r $b $(rtt "$n")"
        done
    done
    down
}

coldmem() {
    mkdir -p "$LAB"
    gcc -O2 -Wall -o "$LAB/coldmem" "$HERE/coldmem.c"
    "$LAB/coldmem"
}

coldrecv() {
    local i
    mkdir -p "$LAB"
    gcc -O2 -Wall -o "$LAB/coldrecv" "$HERE/coldrecv.c"
    for i in $(seq 1 "${1:-3}"); do
        echo "run $i"
        "$LAB/coldrecv" 10000
    done
}

coldclock() {
    mkdir -p "$LAB"
    gcc -O2 -Wall -o "$LAB/coldclock" "$HERE/coldclock.c"
    "$LAB/coldclock"
}

coldsend() {
    local bin=$LAB/coldsend rx i
    down
    mkdir -p "$LAB"
    gcc -O2 -Wall -o "$bin" "$HERE/coldsend.c"
    "$B/netns.sh" up > /dev/null
    ip netns exec mb-b "$bin" rx 7000 &
    rx=$!
    # shellcheck disable=SC2064  # expand now: the receiver's PID
    trap "kill $rx 2> /dev/null; down" EXIT
    sleep 0.2
    for i in $(seq 1 "${1:-3}"); do
        echo "run $i"
        ip netns exec mb-a "$bin" tx 10.231.0.2 7000 10000
    done
}

[ "$(id -u)" = 0 ] || { echo "lab.sh: run as root" >&2; exit 1; }
cmd=${1:-}; shift || true
case $cmd in
    up) up "$@" ;;
    down) down ;;
    pids) pids ;;
    rtt) rtt "$@" ;;
    ab) ab "$@" ;;
    coldmem) coldmem ;;
    coldclock) coldclock ;;
    coldrecv) coldrecv "$@" ;;
    coldsend) coldsend "$@" ;;
    *) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
