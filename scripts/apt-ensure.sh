#!/usr/bin/env bash
# Install the Debian packages that are missing (the one copy of this: slurm/slurm-up.sh, docker/dockerd.sh,
# docker/base-image.sh and the Makefile's container targets call it).
#
#   scripts/apt-ensure.sh PKG [PKG...]     exit 0 when all are installed; one `error:` line and exit 1 if not
#
# A fresh machine's package lists may be stale or empty: a failed install is retried once after
# `apt-get update`. Without systemd, a package's postinst would start its system service (munge, slurm,
# mariadb, docker) through invoke-rc.d, which would then fight ours for ports and sockets: a policy-rc.d that
# answers 101 stops that for the duration of the install.
set -uo pipefail

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for pkg in "$@"; do installed "$pkg" || missing+=("$pkg"); done
(( ${#missing[@]} )) || exit 0
[[ $(id -u) -eq 0 ]] || { echo "error: ${missing[*]} not installed and installing needs root: sudo apt-get install ${missing[*]}" >&2; exit 1; }

echo "apt-ensure: installing ${missing[*]} ..." >&2
policy=/usr/sbin/policy-rc.d added_policy=0
if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1; fi
log=$(mktemp)
trap '(( added_policy )) && rm -f "$policy"; rm -f "$log"' EXIT
install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >>"$log" 2>&1
}
if ! install; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1
  if ! install; then
    tail -n 5 "$log" >&2
    echo "error: apt-get install ${missing[*]} failed (see the lines above)" >&2
    exit 1
  fi
fi
echo "apt-ensure: installed ${missing[*]}" >&2
