#!/usr/bin/env bash
# Build one of pantheon's images (docker/Dockerfile), tagged only when the build succeeded.
#
#   docker/build.sh [train|serve] [TAG]     default: train -> pantheon:latest, serve -> pantheon-serve:latest
#
# What it decides so that the Dockerfile stays plain:
#   base     BASE_IMAGE when set; else the Dockerfile's default (a CUDA runtime image) when it is here or can
#            be pulled; else (no registry reachable) the local Debian base from docker/base-image.sh.
#   wheels   this machine's local pip indexes (PANTHEON_LOCAL_INDEXES, default /opt/pypi /opt/pypi-more when
#            they exist), served read-only on the loopback for the build, so torch comes from local disk.
#   user     UID/GID of the invoking user (SUDO_UID under sudo; root maps to 1000: the image user is never root).
#   labels   the git commit (+ "-dirty" when the build inputs differ from it) and the pinned requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${1:-train}
case "$TARGET" in
  train) TAG=${2:-pantheon:latest} ;;
  serve) TAG=${2:-pantheon-serve:latest} ;;
  *) echo "error: unknown target '$TARGET': use train or serve" >&2; exit 2 ;;
esac

die() { echo "error: $*" >&2; exit 1; }
# BuildKit through the Debian client: it has BuildKit built in (a newer client would need the buildx plugin).
DOCKER=docker; [[ -x /usr/bin/docker ]] && DOCKER=/usr/bin/docker

bash docker/dockerd.sh running ||
  die "no Docker daemon answers: start one with \`docker/dockerd.sh up\` (root) or \`systemctl start docker\`"

# --- base ---
if [[ -z ${BASE_IMAGE:-} ]]; then
  BASE_IMAGE=$(sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile)
  if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 && ! "$DOCKER" pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "build: $BASE_IMAGE cannot be pulled (no registry reachable?): building on the local Debian base" >&2
    BASE_IMAGE=$(bash docker/base-image.sh)
  fi
fi

# --- local wheels on the loopback ---
INDEXES=()
for dir in ${PANTHEON_LOCAL_INDEXES:-/opt/pypi /opt/pypi-more}; do
  [[ -d $dir/simple ]] && INDEXES+=("$dir")
done
LOCAL_INDEX=""
LOCAL_PACKAGES=""
if (( ${#INDEXES[@]} )); then
  # torch as requirements.txt pins it, and the CUDA wheels it depends on, from local disk only.
  LOCAL_PACKAGES=$(grep -E '^(torch|torchvision)==' requirements.txt | paste -sd' ')
  for dir in "${INDEXES[@]}"; do
    LOCAL_PACKAGES+=" $(find "$dir/simple" -mindepth 1 -maxdepth 1 -type d \( -name 'nvidia-*' -o -name cuda-toolkit \) \
      -printf '%f ')"
  done
  served=$(mktemp -d)
  for dir in "${INDEXES[@]}"; do ln -s "$dir" "$served/$(basename "$dir")"; done
  # A fixed port: the index URLs are a build arg, and a changed build arg invalidates the pip layer's cache.
  port=${PANTHEON_INDEX_PORT:-38741}
  python3 -m http.server --bind 127.0.0.1 --directory "$served" "$port" >/dev/null 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null; rm -rf "$served"' EXIT
  for _ in $(seq 50); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
    sleep 0.2
  done
  for dir in "${INDEXES[@]}"; do LOCAL_INDEX+="http://127.0.0.1:$port/$(basename "$dir")/simple "; done
  LOCAL_INDEX=${LOCAL_INDEX% }
fi

# --- identity ---
uid=${SUDO_UID:-$(id -u)}; gid=${SUDO_GID:-$(id -g)}
[[ $uid -eq 0 ]] && uid=1000 && gid=1000
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $commit != unknown ]] && ! git diff --quiet HEAD -- docker src configs requirements*.txt pyproject.toml 2>/dev/null; then
  commit="$commit-dirty"
fi
pins=$(grep -Ev '^[[:space:]]*(#|$)' requirements.txt | paste -sd' ')

# --- build to a temporary tag; the real tag moves only on success ---
tmp_tag="${TAG%%:*}:build-$$"
start=$(date +%s)
if ! DOCKER_BUILDKIT=1 "$DOCKER" build --network host -f docker/Dockerfile --target "$TARGET" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg LOCAL_INDEX="$LOCAL_INDEX" --build-arg LOCAL_PACKAGES="$LOCAL_PACKAGES" \
    --build-arg UID="$uid" --build-arg GID="$gid" --build-arg GIT_COMMIT="$commit" \
    --label "pantheon.requirements=$pins" --label "pantheon.base=$BASE_IMAGE" \
    -t "$tmp_tag" .; then
  "$DOCKER" rmi "$tmp_tag" >/dev/null 2>&1 || true
  die "docker build of target $TARGET failed (see above); $TAG was left as it was"
fi
"$DOCKER" tag "$tmp_tag" "$TAG"
"$DOCKER" rmi "$tmp_tag" >/dev/null
size=$("$DOCKER" image inspect -f '{{.Size}}' "$TAG")
echo "build: $TAG ($TARGET, base $BASE_IMAGE, commit $commit, uid $uid) in $(( $(date +%s) - start )) s," \
  "$(( size / 1000000 )) MB"
