#!/usr/bin/env bash
# Build localhost/tcpcopy-online and localhost/tcpcopy-intercept (tags VERSION and latest) with podman from
# the .debs in dist/ (make packages), on a local Debian 12 base image made with mmdebstrap: no registry
# is needed. The base image is made once and kept (about 45 s); the two images take seconds.
# usage: build-images.sh VERSION
set -euo pipefail
version=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dist=$(cd "$here/../.." && pwd)/dist
base=localhost/tcpcopy-base:bookworm

if ! podman image exists "$base"; then
    # what the .debs depend on, so `dpkg -i` needs no network in the build
    mmdebstrap --quiet --variant=minbase --include=python3.11,libpcap0.8,adduser,iproute2 bookworm - \
        | podman import --quiet - "$base" >/dev/null
fi

context="$dist/containers"
rm -rf "$context"
mkdir -p "$context"
cp "$dist/tcpcopy-common_${version}-1_amd64.deb" "$dist/tcpcopy-online_${version}-1_amd64.deb" \
   "$dist/tcpcopy-intercept_${version}-1_amd64.deb" "$here/entrypoint.sh" "$context/"
for role in online intercept; do
    old=$(podman image inspect --format '{{.Id}}' "localhost/tcpcopy-$role:$version" 2>/dev/null || true)
    podman build --quiet --pull=never --build-arg "VERSION=$version" --build-arg "BASE=$base" \
        -t "localhost/tcpcopy-$role:$version" -t "localhost/tcpcopy-$role:latest" \
        -f "$here/Containerfile.$role" "$context" >/dev/null
    new=$(podman image inspect --format '{{.Id}}' "localhost/tcpcopy-$role:$version")
    # the image this one replaces, now untagged (kept if a container still uses it)
    if [ -n "$old" ] && [ "$old" != "$new" ]; then
        podman rmi "$old" >/dev/null 2>&1 || true
    fi
    echo "built localhost/tcpcopy-$role:$version"
done
rm -rf "$context"
