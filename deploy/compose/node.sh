#!/bin/busybox sh
# Entrypoint of a compose mesh node. Joins the coordinator with the join
# token in /run/segmesh-token/join.token the first time (the state volume
# keeps the enrollment across restarts), runs segmesh-node, and, when
# SEGMESH_SERVICE_PORT is set, serves a one-line page (the node's name) with
# busybox httpd on the node's overlay address only: the service is reachable
# through the mesh and nowhere else.
#
# SEGMESH_NODE_NAME     e.g. web-1
# SEGMESH_SERVICE_PORT  optional TCP port of the node's service
set -eu
. /usr/local/lib/segmesh/lib.sh

: "${SEGMESH_NODE_NAME:?set SEGMESH_NODE_NAME}"
state=/var/lib/segmesh-node
token=/run/segmesh-token/join.token

if [ ! -e "$state/node.toml" ]; then
    tries=0
    until [ -s "$token" ]; do
        tries=$((tries + 1))
        [ "$tries" -le 600 ] || { echo "no join token at $token after 120 s" >&2; exit 1; }
        sleep 0.2
    done
    segmesh-node join --token-file "$token" --name "$SEGMESH_NODE_NAME" --state-dir "$state"
fi

segmesh-node run --config "$state/node.toml" &
pid=$!
forward_signals "$pid"

# The node's overlay IPv4 address, once the TUN device carries it.
iface=$(sed -n 's/^interface *= *"\(.*\)"/\1/p' "$state/node.toml")
iface=${iface:-segmesh0}
tries=0
addr=
until [ -n "$addr" ]; do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" || exit $?; exit 1; }
    tries=$((tries + 1))
    [ "$tries" -le 300 ] || { echo "$iface has no IPv4 address after 60 s" >&2; exit 1; }
    sleep 0.2
    addr=$(ip -4 -o addr show dev "$iface" 2>/dev/null | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -n 1)
done
echo "$SEGMESH_NODE_NAME is $addr on $iface"

if [ -n "${SEGMESH_SERVICE_PORT:-}" ]; then
    mkdir -p /srv/www
    echo "$SEGMESH_NODE_NAME" >/srv/www/index.html
    busybox httpd -p "$addr:$SEGMESH_SERVICE_PORT" -h /srv/www
    echo "serving http://$addr:$SEGMESH_SERVICE_PORT/"
fi
mark_ready
exit_with "$pid"
