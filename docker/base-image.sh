#!/usr/bin/env bash
# Make the local base image (Debian 12 minbase) for machines that reach no container registry:
# debootstrap -> tarball (cached) -> `docker import`. The Dockerfile's default base is a CUDA runtime image
# from a registry; this one is for CI and offline machines (torch's CUDA wheels bundle their own CUDA
# libraries, so the image still runs on GPUs through the NVIDIA container toolkit).
#
#   docker/base-image.sh [TAG]      default TAG: pantheon-base:bookworm; prints the tag
#
# Cached across runs and clones: the tarball in $PANTHEON_CACHE (default /var/cache/pantheon); an image
# already tagged TAG is reused as it is. Needs root (debootstrap) and a running daemon (docker/dockerd.sh up).
set -euo pipefail

TAG=${1:-pantheon-base:bookworm}
CACHE=${PANTHEON_CACHE:-/var/cache/pantheon}
MIRROR=${PANTHEON_DEBIAN_MIRROR:-http://deb.debian.org/debian}
TARBALL=$CACHE/base/bookworm-minbase.tar
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "error: $*" >&2; exit 1; }
DOCKER=docker; [[ -x /usr/bin/docker ]] && DOCKER=/usr/bin/docker
docker_cli() { "$DOCKER" "$@"; }

docker_cli version >/dev/null 2>&1 || die "no Docker daemon answers: start one with \`docker/dockerd.sh up\`"
if docker_cli image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"
  exit 0
fi

if [[ ! -s $TARBALL ]]; then
  [[ $(id -u) -eq 0 ]] || die "making the base rootfs needs root (debootstrap): run it with sudo, or pass BASE_IMAGE=<an image you have>"
  command -v debootstrap >/dev/null || bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/apt-ensure.sh" debootstrap ||
    die "debootstrap is missing and could not be installed (apt-get install debootstrap)"
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs" "$TARBALL.tmp"' EXIT
  echo "base-image: debootstrap bookworm (minbase) from $MIRROR" >&2
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 ||
    die "debootstrap failed; the end of its log: $(tail -n 3 "$rootfs.log" | tr '\n' ' ')"
  rm -f "$rootfs.log"
  # The host's CA bundle: it may hold a site CA that pip and apt need to reach their registries from inside.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  mkdir -p "$(dirname "$TARBALL")"
  tar -C "$rootfs" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"   # a tarball in place is a whole one
fi

# Import under a temporary tag and retag on success: nothing half-made carries the real tag.
tmp_tag="${TAG%%:*}:import-$$"
docker_cli import --change 'CMD ["/bin/bash"]' "$TARBALL" "$tmp_tag" >/dev/null
docker_cli tag "$tmp_tag" "$TAG"
docker_cli rmi "$tmp_tag" >/dev/null
echo "$TAG"
