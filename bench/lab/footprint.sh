#!/usr/bin/env bash
# footprint.sh - code and data touched per packet pass of a tunnel daemon,
# counted by valgrind (lackey) in the lab's namespaces (root only).
#
#   footprint.sh IMPL [N]     IMPL is segmesh or boringtun-1t; N pings
#                             (200, 50 ms apart: valgrind slows the daemons)
#
# One daemon at a time runs under valgrind, the other natively: node A
# (it pings) in a first run, node B (it answers) in a second. The one under
# valgrind makes the handshake itself (its first ping goes out before the
# peer's), because as a responder it can take longer than WireGuard's
# 5-second retry to answer, and the initiator's retries then make every
# answer stale (seen on a slow host with both under valgrind). The logs
# stay in $LAB_DIR-footprint (large: ~100 MB each; the next run replaces
# them) for footprint.py --syms. Prints one table per daemon. Needs
# valgrind (apt).
# Env: as lab.sh (SEGMESH_BIN, the boringtun-cli in the harness's cache).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB=${LAB_DIR:-/tmp/segmesh-lab}
OUT=$LAB-footprint
impl=${1:?usage: footprint.sh IMPL [N]}
n=${2:-200}
command -v valgrind > /dev/null || { echo "footprint.sh: install valgrind" >&2; exit 1; }
"$HERE/lab.sh" down
rm -rf "$OUT" && mkdir -p "$OUT"

# A wrapper per binary: the daemon of one side under valgrind (`run` with
# that side's config, or boringtun-cli with that side's interface; its log
# is named after the side), everything else (keygen, the other side) as is.
wrap() {   # wrap NAME REAL_BINARY SIDE_ARGUMENT SIDE
    cat > "$OUT/$1" <<EOF
#!/bin/sh
case " \$* " in
*" $3 "*)
    exec valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes \\
        --log-file=$OUT/$1.$4.%p.log "$2" "\$@" ;;
esac
exec "$2" "\$@"
EOF
    chmod +x "$OUT/$1"
}

for side in a b; do
    case $impl in
        segmesh)
            wrap segmesh-node "${SEGMESH_BIN:-$REPO/target/release/segmesh-node}" \
                "$LAB/segmesh/$side.toml" $side
            LAB_FIRST=$side LAB_UP_WAIT=120 SEGMESH_BIN=$OUT/segmesh-node \
                "$HERE/lab.sh" up segmesh > /dev/null ;;
        boringtun-1t)
            wrap boringtun-cli "$HOME/.cache/mesh-bench/boringtun-cli-0.7.1/bin/boringtun-cli" \
                "mbbt-$side" $side
            LAB_FIRST=$side LAB_UP_WAIT=120 BORINGTUN_BIN=$OUT/boringtun-cli \
                "$HERE/lab.sh" up boringtun-1t > /dev/null ;;
        *) echo "footprint.sh: IMPL is segmesh or boringtun-1t" >&2; exit 2 ;;
    esac
    trap '"$HERE/lab.sh" down' EXIT
    # The handshake can leave a burst that gives the socket its own thread
    # (two lanes); pings 50 ms apart would keep it there. Wait until it
    # parks again, so the passes are those of an idle tunnel's round trip.
    sleep 2
    ip netns exec mb-a ping -q -n -c "$n" -i 0.05 -W 1 10.232.0.2 | tail -n 1
    "$HERE/lab.sh" down
    trap - EXIT
    # valgrind can outlive the signal a moment while it writes its log
    while pgrep -f "valgrind.*$OUT/" > /dev/null; do sleep 0.2; done
done
for side in a b; do
    for log in "$OUT"/*."$side".*.log; do
        if [ $side = a ]; then echo "== node A, the pinging one ($(basename "$log"))"
        else echo "== node B, the answering one ($(basename "$log"))"; fi
        python3 "$HERE/footprint.py" "$log" --min $((n / 4))
    done
done
