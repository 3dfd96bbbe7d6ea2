# impl-segmesh.sh - segmesh-node in static mode (netmap files), for the mesh
# benchmark harness (/work/shared/bench, see its README "Adding an
# implementation"). Found through MB_IMPL_PATH:
#
#   cargo build --release -p segmesh-node
#   sudo SEGMESH_BIN=$PWD/target/release/segmesh-node MB_IMPL_PATH=$PWD/bench \
#        /work/shared/bench/anchors.sh --only segmesh,boringtun,wireguard-go
#
# Each end gets a key from `segmesh-node keygen`, a netmap naming the other
# end as its only peer (ICMP and the iperf3 port both ways, so the stateful
# filter is on the measured path), and a node.toml. The netmaps are written
# directly as JSON in the format `segmeshctl policy netmap --json` produces.
# scripts/build-pgo sources this file too, for sm_netmap and sm_config (its
# training run uses the same two-node setup).
# Env: SEGMESH_BIN (default: segmesh-node from PATH), SEGMESH_THREADS
# (worker threads, default: the node's own default), SEGMESH_OFFLOAD
# (true|false: TUN/UDP offloads, default: the node's own default, true),
# SEGMESH_LISTEN (listen_address, e.g. 0.0.0.0 for an IPv4-only socket;
# default: dual-stack).

SEGMESH_BIN=${SEGMESH_BIN:-segmesh-node}
SM_IF_A=mbsm-a   # distinct names: the UAPI socket directory is shared
SM_IF_B=mbsm-b

impl_install() {
    command -v "$SEGMESH_BIN" > /dev/null 2>&1 ||
        die "segmesh-node not found: build it (cargo build --release -p segmesh-node) and set SEGMESH_BIN"
}

impl_version() {
    "$SEGMESH_BIN" --version 2>/dev/null | head -n1
}

# sm_network ADDR PREFIX: the IPv4 network address of ADDR/PREFIX.
sm_network() {
    local IFS=. a b c d
    read -r a b c d <<< "$1"
    local ip=$(( (a << 24) | (b << 16) | (c << 8) | d ))
    local mask=$(( $2 == 0 ? 0 : (0xffffffff << (32 - $2)) & 0xffffffff ))
    ip=$(( ip & mask ))
    echo "$(( ip >> 24 & 255 )).$(( ip >> 16 & 255 )).$(( ip >> 8 & 255 )).$(( ip & 255 ))/$2"
}

# sm_netmap NAME SELF_KEY SELF_ADDR PEER_NAME PEER_KEY PEER_ADDR PEER_ENDPOINT
sm_netmap() {
    local ports="[\"icmp\", \"tcp/${MB_IPERF_PORT:-5201}\"]"
    cat <<JSON
{
  "format": 1,
  "version": 1,
  "node": { "name": "$1", "public_key": "$2", "addresses": ["$3"], "labels": {} },
  "overlay": ["$(sm_network "$OVER_A" "$OVER_PREFIX")"],
  "peers": [
    {
      "public_key": "$5",
      "allowed_ips": ["$6/32"],
      "outbound": $ports,
      "inbound": $ports,
      "name": "$4",
      "endpoints": ["$7"]
    }
  ]
}
JSON
}

# sm_config NAME INTERFACE
sm_config() {
    cat <<TOML
interface = "$2"
private_key_file = "$WORK/$1.key"
netmap_file = "$WORK/$1.netmap.json"
listen_port = 51820
control_socket = "$WORK/$1.ctl"
TOML
    if [ -n "${SEGMESH_THREADS:-}" ]; then echo "threads = $SEGMESH_THREADS"; fi
    if [ -n "${SEGMESH_OFFLOAD:-}" ]; then echo "offload = $SEGMESH_OFFLOAD"; fi
    if [ -n "${SEGMESH_LISTEN:-}" ]; then echo "listen_address = \"$SEGMESH_LISTEN\""; fi
}

impl_up() {
    local pub_a pub_b
    rm -f "/var/run/wireguard/$SM_IF_A.sock" "/var/run/wireguard/$SM_IF_B.sock"
    pub_a=$("$SEGMESH_BIN" keygen --out "$WORK/a.key" | tail -n1 | awk '{print $NF}')
    pub_b=$("$SEGMESH_BIN" keygen --out "$WORK/b.key" | tail -n1 | awk '{print $NF}')
    sm_netmap a "$pub_a" "$OVER_A" b "$pub_b" "$OVER_B" "$UNDER_B:51820" > "$WORK/a.netmap.json"
    sm_netmap b "$pub_b" "$OVER_B" a "$pub_a" "$OVER_A" "$UNDER_A:51820" > "$WORK/b.netmap.json"
    sm_config a "$SM_IF_A" > "$WORK/a.toml"
    sm_config b "$SM_IF_B" > "$WORK/b.toml"
    spawn_daemon "$NS_A" segmesh-a "$SEGMESH_BIN" run --config "$WORK/a.toml"
    spawn_daemon "$NS_B" segmesh-b "$SEGMESH_BIN" run --config "$WORK/b.toml"
    wait_until 10 ip -n "$NS_A" link show "$SM_IF_A" || die "segmesh-a created no $SM_IF_A: $(tail -n 5 "$WORK/segmesh-a.log")"
    wait_until 10 ip -n "$NS_B" link show "$SM_IF_B" || die "segmesh-b created no $SM_IF_B: $(tail -n 5 "$WORK/segmesh-b.log")"
}
