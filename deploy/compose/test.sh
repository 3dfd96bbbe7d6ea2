#!/usr/bin/env bash
# The compose test mesh, end to end: builds the image (no registry), brings
# up a coordinator, web-1, api-1, db-1 and intruder-1 under a unique compose
# project, and proves
#   1. every node enrolled with its own join token and acked its netmap;
#   2. the connectivity matrix: web-1 -> api-1:8080 and api-1 -> db-1:5432
#      work, the other ten pairs fail and the sender counts the drop;
#   3. the intruder's netmap is empty and no node holds its key;
#   4. a label change (web-1 env=staging, then back to prod) cuts and
#      restores web-1 -> api-1;
#   5. revoking db-1 removes it from api-1's netmap and cuts api-1 -> db-1.
# Everything (containers, network, volumes, image) is removed on exit,
# failure or Ctrl-C. Needs root or the docker group, docker-compose, cargo,
# jq and busybox-static.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
project=segmesh-test-$$-$(date +%s)
export COMPOSE_PROJECT_NAME=$project
export SEGMESH_IMAGE=segmesh-compose-test:$project
# A /24 unlikely to collide with another run or the host; override if it does.
export SEGMESH_COMPOSE_NET=${SEGMESH_COMPOSE_NET:-172.29.$((100 + RANDOM % 150))}

dc() { docker-compose -p "$project" -f "$here/docker-compose.yml" "$@"; }
ms() { echo $(($(date +%s%N) / 1000000)); }
log() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ]; then
        echo "--- container logs (last 40 lines each)" >&2
        dc logs --no-color --tail=40 >&2 2>/dev/null || true
    fi
    dc down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    docker rmi -f "$SEGMESH_IMAGE" >/dev/null 2>&1 || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in docker docker-compose jq; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done

start=$(ms)
"$here/build-image.sh" "$SEGMESH_IMAGE"
built=$(ms)

log "compose up (project $project, underlay $SEGMESH_COMPOSE_NET.0/24)"
dc up -d
created=$(ms)

nodes=(web-1 api-1 db-1 intruder-1)
declare -A cid
for s in coordinator "${nodes[@]}"; do
    cid[$s]=$(dc ps -q "$s")
    [ -n "${cid[$s]}" ] || fail "no container for $s"
done

# Runs a command in a service's container (docker exec: faster than compose's).
run_in() { local s=$1; shift; docker exec "${cid[$s]}" "$@"; }
ctl() { run_in coordinator segmeshctl "$@"; }
status() { run_in "$1" segmesh-node status --json; }

wait_for() { # SECONDS DESCRIPTION COMMAND...
    local deadline=$(($(ms) + $1 * 1000)) what="$2 (${1} s)"
    shift 2
    until "$@"; do
        [ "$(ms)" -lt "$deadline" ] || fail "timed out waiting for: $what"
        sleep 0.2
    done
}

healthy() {
    local s h
    for s in coordinator "${nodes[@]}"; do
        h=$(docker inspect -f '{{.State.Status}}/{{.State.Health.Status}}' "${cid[$s]}")
        case $h in
            running/healthy) ;;
            exited/* | dead/*) fail "$s stopped ($h)" ;;
            *) return 1 ;;
        esac
    done
}
wait_for 120 "all containers healthy" healthy

nodes_json() { ctl nodes list --json; }
all_synced() {
    nodes_json | jq -e 'length == 4 and
        (map(select(.revoked == false)) | all(.connected == true and .acked_version == .netmap_version))' >/dev/null
}
wait_for 30 "4 nodes connected and acked" all_synced
up=$(ms)
log "mesh up: image built in $((built - start)) ms, containers created in $((created - built)) ms, enrolled and synced $((up - created)) ms later"

declare -A addr key port=([web-1]=80 [api-1]=8080 [db-1]=5432 [intruder-1]=8080)
listing=$(nodes_json)
for n in "${nodes[@]}"; do
    addr[$n]=$(jq -r --arg n "$n" '.[] | select(.name == $n) | .addr_v4' <<<"$listing")
    key[$n]=$(status "$n" | jq -r .public_key)
    [ -n "${addr[$n]}" ] && [ "${addr[$n]}" != null ] || fail "no overlay address for $n"
    echo "   $n ${addr[$n]} ${key[$n]}"
done

# An HTTP GET from one node to another's service over the overlay; succeeds
# only if the answer is the target's name.
get() { # FROM TO
    local body
    body=$(run_in "$1" busybox timeout 2 busybox wget -q -O - "http://${addr[$2]}:${port[$2]}/" 2>/dev/null) || return 1
    [ "$body" = "$2" ]
}
drops() { status "$1" | jq '.drops.no_route + .drops.policy'; }
has_peer() { status "$1" | jq -e --arg k "$2" 'any(.peers[]; .public_key == $k)' >/dev/null; }
lacks_peer() { ! has_peer "$@"; }
fails() { ! "$@"; }

log "connectivity matrix"
allowed=" web-1>api-1 api-1>db-1 "
for from in "${nodes[@]}"; do
    for to in "${nodes[@]}"; do
        [ "$from" != "$to" ] || continue
        if [[ $allowed == *" $from>$to "* ]]; then
            wait_for 15 "$from -> $to:${port[$to]} allowed" get "$from" "$to"
            echo "   $from -> $to:${port[$to]}  allowed: works"
        fi
    done
done
for from in "${nodes[@]}"; do
    for to in "${nodes[@]}"; do
        [ "$from" != "$to" ] || continue
        [[ $allowed != *" $from>$to "* ]] || continue
        before=$(drops "$from")
        get "$from" "$to" && fail "$from -> $to:${port[$to]} must be denied"
        after=$(drops "$from")
        [ "$after" -gt "$before" ] || fail "$from -> $to: failed, but $from counted no drop ($before -> $after)"
        echo "   $from -> $to:${port[$to]}  denied: fails, $from dropped $((after - before)) packet(s)"
    done
done

log "intruder"
st=$(status intruder-1)
jq -e '.netmap_version >= 1 and (.peers | length) == 0' <<<"$st" >/dev/null ||
    fail "intruder-1's netmap is not empty: $st"
for n in web-1 api-1 db-1; do
    lacks_peer "$n" "${key[intruder-1]}" || fail "$n holds intruder-1's key"
done
echo "   intruder-1: netmap version $(jq .netmap_version <<<"$st"), 0 peers; no node holds its key"

log "label change: web-1 env=staging"
t0=$(ms)
ctl nodes label web-1 env=staging >/dev/null
wait_for 10 "web-1 loses api-1" lacks_peer web-1 "${key[api-1]}"
t1=$(ms)
fails get web-1 api-1 || fail "web-1 -> api-1 still works after env=staging"
echo "   api-1 left web-1's netmap $((t1 - t0)) ms after the label change; web-1 -> api-1 fails"
t0=$(ms)
ctl nodes label web-1 env=prod >/dev/null
wait_for 10 "web-1 regains api-1" has_peer web-1 "${key[api-1]}"
t1=$(ms)
wait_for 15 "web-1 -> api-1 works again" get web-1 api-1
echo "   back to env=prod: api-1 in web-1's netmap after $((t1 - t0)) ms, web-1 -> api-1 works again"

log "revocation: db-1"
t0=$(ms)
out=$(ctl nodes revoke db-1)
wait_for 10 "api-1 loses db-1" lacks_peer api-1 "${key[db-1]}"
t1=$(ms)
echo "   $out"
fails get api-1 db-1 || fail "api-1 -> db-1 still works after revoking db-1"
nodes_json | jq -e '.[] | select(.name == "db-1") | .revoked == true' >/dev/null ||
    fail "db-1 is not listed as revoked"
echo "   db-1 left api-1's netmap $((t1 - t0)) ms after the revoke; api-1 -> db-1 fails"
get web-1 api-1 || fail "web-1 -> api-1 broke after revoking db-1"

log "PASS in $((($(ms) - start) / 1000)) s (image build $(((built - start) / 1000)) s)"
