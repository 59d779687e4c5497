#!/usr/bin/env bash
# The cluster image: pantheon's Docker image as one SquashFS file that charliecloud's ch-run runs without root
# (slurm/task.sh, PANTHEON_CONTAINER_RUNTIME=charliecloud).
#
#   docker/image-sqfs.sh [OUT] [TAG]      default OUT: $PANTHEON_CACHE/images/pantheon.sqfs, TAG: pantheon:latest
#
# The image is exported into a directory; the paths that jobs bind at the same path (the repository,
# PANTHEON_CONTAINER_BINDS) get empty mount points there, because a read-only SquashFS cannot grow them at run
# time (charliecloud 0.31 has no --write-fake; /tmp is shared with the host and needs none); mksquashfs then
# packs it. (ch-convert would do the same in two steps, each slower: see below.) Skipped when OUT already holds this image id with these mount points. Written beside OUT and
# renamed: OUT is never a half-written file.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${PANTHEON_CACHE:-/var/cache/pantheon}
OUT=${1:-$CACHE/images/pantheon.sqfs}
TAG=${2:-pantheon:latest}
die() { echo "error: $*" >&2; exit 1; }
DOCKER=docker; [[ -x /usr/bin/docker ]] && DOCKER=/usr/bin/docker

command -v ch-run >/dev/null || die "ch-run is missing: apt-get install charliecloud squashfuse (make image-sqfs does)"
command -v mksquashfs >/dev/null || die "mksquashfs is missing: apt-get install squashfs-tools"
bash docker/dockerd.sh running || die "no Docker daemon answers: start one with \`docker/dockerd.sh up\`"
id=$("$DOCKER" image inspect -f '{{.Id}}' "$TAG" 2>/dev/null) ||
  die "no image $TAG: build it first with \`make docker-build\`"

mount_points=("$PWD")
IFS=: read -r -a extra <<<"${PANTHEON_CONTAINER_BINDS:-}"
for path in "${extra[@]}"; do [[ -n $path && $path != /tmp && $path != /tmp/* ]] && mount_points+=("$(realpath -m "$path")"); done
stamp="$id ${mount_points[*]} $(sha256sum <"$0" | cut -c1-12)"   # this script's version too
if [[ -s $OUT && -f $OUT.id && $(cat "$OUT.id") == "$stamp" ]]; then
  echo "image-sqfs: $OUT is up to date ($TAG ${id:7:12})"
  exit 0
fi

mkdir -p "$(dirname "$OUT")"
work=$(mktemp -d "$(dirname "$OUT")/.sqfs-XXXXXX")
cid=""
trap '[[ -n $cid ]] && "$DOCKER" rm "$cid" >/dev/null 2>&1; rm -rf --one-file-system "$work"' EXIT
start=$(date +%s)
# The image's filesystem, streamed into a directory. (`ch-convert -i docker -o dir` gzips the whole export
# into a temporary tarball first, single-threaded: minutes for a CUDA torch image, for nothing.) /dev stays
# empty: ch-run mounts its own. ch/environment, which ch-run --set-env reads (an export drops the image's ENV):
# the image's PATH to its venv, and nothing that points into the read-only image (its HOME, WANDB_DIR).
mkdir "$work/root"
cid=$("$DOCKER" create --read-only "$TAG" /bin/true)
"$DOCKER" export "$cid" | tar -x -p -C "$work/root" -f - --exclude='dev/*' ||
  die "docker export of $TAG failed"
mkdir -p "$work/root/ch"
"$DOCKER" image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$TAG" |
  grep -E '^(PATH|VIRTUAL_ENV|PYTHONUNBUFFERED|MPLCONFIGDIR)=' >"$work/root/ch/environment"
# The mount points ch-run needs (what `ch-convert -o squash` adds), and those of the binds.
mkdir -p "$work/root"/{bin,dev,etc,mnt,proc,usr} "$work/root"/mnt/{0..9}
touch "$work/root/etc/hosts" "$work/root/etc/resolv.conf"
for path in "${mount_points[@]}"; do mkdir -p "$work/root$path"; done
# zstd level 3: a fraction of the time of mksquashfs' default gzip -9 (minutes on 2 cores for 7 GB), read by
# squashfuse and the kernel alike. -all-root: files belong to whoever runs the image.
mksquashfs "$work/root" "$work/image.sqfs" -comp zstd -Xcompression-level 3 -b 65536 -noappend -all-root \
  -no-progress -quiet >"$work/log" 2>&1 || die "mksquashfs failed: $(tail -n 3 "$work/log" | tr '\n' ' ')"
mv "$work/image.sqfs" "$OUT"
echo "$stamp" >"$OUT.id"
echo "image-sqfs: $OUT ($TAG ${id:7:12}, $(( $(stat -c %s "$OUT") / 1000000 )) MB) in $(( $(date +%s) - start )) s"
