#!/bin/busybox sh
# Entrypoint of the compose mesh's coordinator. Starts segmesh-coordinator
# and, on the first start of its data volume only, applies the policy and
# writes one single-use join token per node into that node's own token
# volume (/tokens/<name>/join.token, 0600). The admin token stays in the
# coordinator's data volume; nodes only ever see their own join token, which
# carries the coordinator URL and pins its CA.
#
# SEGMESH_PUBLIC_URL   https://<this container's fixed address>:8443
# SEGMESH_JOIN_TOKENS  space-separated NAME:LABELS, e.g. "web-1:role=web,env=prod"
set -eu
. /usr/local/lib/segmesh/lib.sh

: "${SEGMESH_PUBLIC_URL:?set SEGMESH_PUBLIC_URL}"
data=/var/lib/segmesh-coordinator
conf=/etc/segmesh/coordinator.toml

cat >"$conf" <<TOML
listen = "0.0.0.0:8443"
data_dir = "$data"
public_urls = ["$SEGMESH_PUBLIC_URL"]
heartbeat_secs = 5
TOML

segmesh-coordinator serve --config "$conf" &
pid=$!
forward_signals "$pid"

# segmeshctl reads SEGMESH_URL / SEGMESH_ADMIN_TOKEN_FILE / SEGMESH_CA_FILE.
tries=0
until segmeshctl nodes list >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "coordinator exited during start" >&2; wait "$pid"; exit 1; }
    tries=$((tries + 1))
    [ "$tries" -le 300 ] || { echo "coordinator API not up after 60 s" >&2; exit 1; }
    sleep 0.2
done

if [ ! -e "$data/compose-init.done" ]; then
    segmeshctl policy apply /etc/segmesh/policy.toml
    for spec in ${SEGMESH_JOIN_TOKENS:-}; do
        name=${spec%%:*}
        labels=${spec#*:}
        dir=/tokens/$name
        [ -d "$dir" ] || { echo "no token volume mounted at $dir" >&2; exit 1; }
        # The token is printed once on stdout: straight into a 0600 file.
        (umask 077 && segmeshctl tokens create --labels "$labels" \
            --name-prefix "${name%-*}" --ttl 1h --uses 1 >"$dir/join.token.tmp")
        mv "$dir/join.token.tmp" "$dir/join.token"
        echo "join token for $name written ($labels)"
    done
    touch "$data/compose-init.done"
fi
mark_ready
exit_with "$pid"
