#!/usr/bin/env bash
# footprint.sh - code and data touched per packet pass of a tunnel daemon,
# counted by valgrind (lackey) in the lab's namespaces (root only).
#
#   footprint.sh IMPL [N]     IMPL is segmesh or boringtun-1t; N pings
#                             (200, 50 ms apart: valgrind slows the daemons)
#
# Both daemons run under valgrind; the logs stay in $LAB_DIR-footprint
# (large: ~100 MB per daemon; the next run replaces them) for footprint.py
# --syms. Prints one table per
# daemon (node A pings, node B answers). Needs valgrind (apt).
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

# A wrapper per binary: the daemon (`run`, or boringtun-cli) under valgrind,
# everything else (keygen) as is.
wrap() {   # wrap NAME REAL_BINARY ONLY_ARG
    cat > "$OUT/$1" <<EOF
#!/bin/sh
if [ -z "$3" ] || [ "\$1" = "$3" ]; then
    exec valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes \\
        --log-file=$OUT/$1.%p.log "$2" "\$@"
fi
exec "$2" "\$@"
EOF
    chmod +x "$OUT/$1"
}

case $impl in
    segmesh)
        wrap segmesh-node "${SEGMESH_BIN:-$REPO/target/release/segmesh-node}" run
        SEGMESH_BIN=$OUT/segmesh-node "$HERE/lab.sh" up segmesh > /dev/null ;;
    boringtun-1t)
        wrap boringtun-cli "$HOME/.cache/mesh-bench/boringtun-cli-0.7.1/bin/boringtun-cli" ""
        BORINGTUN_BIN=$OUT/boringtun-cli "$HERE/lab.sh" up boringtun-1t > /dev/null ;;
    *) echo "footprint.sh: IMPL is segmesh or boringtun-1t" >&2; exit 2 ;;
esac
trap '"$HERE/lab.sh" down' EXIT
ip netns exec mb-a ping -q -n -c "$n" -i 0.05 -W 1 10.232.0.2 | tail -n 1
"$HERE/lab.sh" down
trap - EXIT
for log in "$OUT"/*.log; do
    echo "== $(basename "$log") (the lower PID is node A, the pinging one)"
    python3 "$HERE/footprint.py" "$log" --min $((n / 4))
done
