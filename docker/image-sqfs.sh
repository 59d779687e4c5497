#!/usr/bin/env bash
# The cluster image: pantheon's Docker image as one SquashFS file that charliecloud's ch-run runs without root
# (slurm/task.sh, PANTHEON_CONTAINER_RUNTIME=charliecloud).
#
#   docker/image-sqfs.sh [OUT] [TAG]      default OUT: $PANTHEON_CACHE/images/pantheon.sqfs, TAG: pantheon:latest
#
# ch-convert flattens the image into a directory; the paths that jobs bind at the same path (the repository,
# PANTHEON_CONTAINER_BINDS) get empty mount points there, because a read-only SquashFS cannot grow them at run
# time (charliecloud 0.31 has no --write-fake; /tmp is shared with the host and needs none); ch-convert then
# packs it. Skipped when OUT already holds this image id with these mount points. Written beside OUT and
# renamed: OUT is never a half-written file.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${PANTHEON_CACHE:-/var/cache/pantheon}
OUT=${1:-$CACHE/images/pantheon.sqfs}
TAG=${2:-pantheon:latest}
die() { echo "error: $*" >&2; exit 1; }
DOCKER=docker; [[ -x /usr/bin/docker ]] && DOCKER=/usr/bin/docker

command -v ch-convert >/dev/null || die "ch-convert is missing: apt-get install charliecloud squashfs-tools squashfuse"
command -v mksquashfs >/dev/null || die "mksquashfs is missing: apt-get install squashfs-tools"
bash docker/dockerd.sh running || die "no Docker daemon answers: start one with \`docker/dockerd.sh up\`"
id=$("$DOCKER" image inspect -f '{{.Id}}' "$TAG" 2>/dev/null) ||
  die "no image $TAG: build it first with \`make docker-build\`"

mount_points=("$PWD")
IFS=: read -r -a extra <<<"${PANTHEON_CONTAINER_BINDS:-}"
for path in "${extra[@]}"; do [[ -n $path && $path != /tmp && $path != /tmp/* ]] && mount_points+=("$(realpath -m "$path")"); done
stamp="$id ${mount_points[*]}"
if [[ -s $OUT && -f $OUT.id && $(cat "$OUT.id") == "$stamp" ]]; then
  echo "image-sqfs: $OUT is up to date ($TAG ${id:7:12})"
  exit 0
fi

mkdir -p "$(dirname "$OUT")"
work=$(mktemp -d "$(dirname "$OUT")/.sqfs-XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
ch-convert --tmp "$work" -i docker -o dir "$TAG" "$work/root" >"$work/log" 2>&1 ||
  die "ch-convert $TAG -> directory failed: $(tail -n 3 "$work/log" | tr '\n' ' ')"
for path in "${mount_points[@]}"; do mkdir -p "$work/root$path"; done
ch-convert --tmp "$work" -i dir -o squash "$work/root" "$work/image.sqfs" >"$work/log" 2>&1 ||
  die "ch-convert directory -> SquashFS failed: $(tail -n 3 "$work/log" | tr '\n' ' ')"
mv "$work/image.sqfs" "$OUT"
echo "$stamp" >"$OUT.id"
echo "image-sqfs: $OUT ($TAG ${id:7:12}, $(( $(stat -c %s "$OUT") / 1000000 )) MB) in $(( $(date +%s) - start )) s"
