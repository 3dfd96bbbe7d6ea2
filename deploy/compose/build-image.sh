#!/usr/bin/env bash
# Builds the compose mesh's image with no registry: a FROM scratch image
# holding the statically linked segmesh binaries and a static busybox.
#
#   deploy/compose/build-image.sh [TAG]     # default segmesh:local
#
# Needs cargo, Docker and /bin/busybox from Debian's busybox-static. The
# static release build goes to target/x86_64-unknown-linux-gnu/release and
# is incremental: a second run rebuilds nothing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
tag=${1:-segmesh:local}
triple=x86_64-unknown-linux-gnu
bins=(segmesh-node segmesh-coordinator segmeshctl)
busybox=${SEGMESH_BUSYBOX:-/bin/busybox}

die() { echo "build-image.sh: $*" >&2; exit 1; }
# Finds cargo under sudo too.
. "$repo/scripts/cargo-env.sh"

# A dynamically linked file has an ELF interpreter (PT_INTERP); a static one
# (static-pie included) has none.
is_static() { ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; }

[ -x "$busybox" ] || die "$busybox not found: apt-get install busybox-static"
is_static "$busybox" || die "$busybox is dynamically linked: apt-get install busybox-static"

echo "== static release build (${bins[*]})"
build_args=(build --release --locked --target "$triple")
for b in "${bins[@]}"; do build_args+=(--bin "$b"); done
(cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' cargo "${build_args[@]}")

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for b in "${bins[@]}"; do
    f=$repo/target/$triple/release/$b
    is_static "$f" || die "$f is dynamically linked; it cannot run in a scratch image"
    cp "$f" "$ctx/"
done
cp "$busybox" "$ctx/busybox"
here=$repo/deploy/compose
cp "$here/Dockerfile.scratch" "$ctx/Dockerfile"
cp "$here/coordinator.sh" "$here/node.sh" "$here/lib.sh" "$ctx/"

echo "== docker build $tag"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "built $tag"
