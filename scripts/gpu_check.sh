#!/usr/bin/env bash
# One prepared GPU check (docs/scaling.md, "The GPU check"): install the carried wheels, then run
# scripts/gpu_check.py inside one time budget (GPU_CHECK_BUDGET_S: 480 s on the GPU, 1500 s for the slower
# CPU rehearsal) and print one summary.
#
#   On the lent GPU machine (device run, carry [".gpu_wheels"]):  bash scripts/gpu_check.sh
#   Here, without CUDA (`make gpu-check`): the CPU rehearsal, the same as  bash scripts/gpu_check.sh --rehearse
#
# GPU: installs only the wheels this python3 lacks (never shadowing its torch), with --no-index --no-deps into
# a fresh --target that goes first on PYTHONPATH. Rehearsal: installs every wheel into a fresh --target as the
# machine's CPython 3.12 would take it (--no-index --no-deps --python-version 3.12), then runs the phases on the
# CPU with this python, `-S` over a view of its site-packages that hides what the GPU machine lacks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
WHEELS=${GPU_WHEELS:-$ROOT/.gpu_wheels}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
started=$SECONDS

mode=rehearse
if [[ "${1:-}" != --rehearse ]] && "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  mode=gpu
fi
if [[ $mode == gpu ]]; then BUDGET_S=${GPU_CHECK_BUDGET_S:-480}; else BUDGET_S=${GPU_CHECK_BUDGET_S:-1500}; fi
echo "[gpu-check] mode: $mode, budget ${BUDGET_S} s, python: $("$PYTHON" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

site=$(mktemp -d "${TMPDIR:-/tmp}/pantheon-gpu-site.XXXXXX")
trap 'rm -rf "$site"' EXIT
pip_install=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site")
if [[ -d $WHEELS ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PYTHON" scripts/gpu_wheels.py check "$WHEELS"
  if [[ $mode == gpu ]]; then
    mapfile -t todo < <("$PYTHON" scripts/gpu_wheels.py missing "$WHEELS")
    if ((${#todo[@]})); then "${pip_install[@]}" "${todo[@]}"; fi
    echo "[gpu-check] installed ${#todo[@]} of $(ls "$WHEELS"/*.whl | wc -l) wheels (the rest this python has)"
    export PYTHONPATH="$site:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
  else
    platforms=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 linux_x86_64)
    "${pip_install[@]}" --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
      "${platforms[@]/#/--platform=}" "$WHEELS"/*.whl
    echo "[gpu-check] rehearsal: all $(ls "$WHEELS"/*.whl | wc -l) wheels install for cp312 into a fresh --target with --no-index ($(du -sh "$site" | cut -f1)); not imported here (python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'))"
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  echo "[gpu-check] no wheels in $WHEELS (make gpu-wheels): using what this python has"
  export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi

left=$((BUDGET_S - (SECONDS - started)))
timeout -k 10 $((left + 30)) "$PYTHON" scripts/gpu_check.py run --mode "$mode" --budget-s "$left" --wheels "$WHEELS"
