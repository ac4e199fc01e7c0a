#!/usr/bin/env bash
# Create (or reuse) the development/test virtualenv and install the project into it, editable,
# with the model and test extras: pip install -e '.[model,test]'.
#
#   DRAGON_VENV   where the venv lives (default: .venv at the repository root)
#   PYTHON        interpreter to create it with (default: python3; must be 3.11, see pyproject.toml)
#
# The install is redone only when pyproject.toml changed (stamp in the venv) or FORCE=1.
# torch==2.13.0 must come from the CPU wheel on this machine's disk (/opt/wheels, via
# PIP_FIND_LINKS): PyPI's build of the same version is CUDA and several GB. If the venv has no
# torch yet and that wheel is missing, we stop (DRAGON_ALLOW_CUDA_TORCH=1 to go on anyway).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV="${DRAGON_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

die() { echo "setup-venv: ERROR: $*" >&2; exit 1; }
log() { echo "setup-venv: $*" >&2; }

if [[ -d /opt/wheels && -z "${PIP_FIND_LINKS:-}" ]]; then
    export PIP_FIND_LINKS=/opt/wheels
fi

if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    log "reusing $VENV ($("$VENV/bin/python" --version))"
else
    command -v "$PY" >/dev/null || die "$PY not found"
    "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "$PY is $("$PY" --version 2>&1); the project needs Python 3.11 (set PYTHON=...)"
    [[ -e $VENV ]] && { log "removing unusable $VENV"; rm -rf "$VENV"; }
    log "creating $VENV with $("$PY" --version)"
    "$PY" -m venv "$VENV" || die "python -m venv failed (apt-get install python3-venv?)"
fi

stamp="$VENV/.dragon-install.stamp"
key=$(sha256sum pyproject.toml | cut -c1-16)
if [[ "${FORCE:-0}" != 1 && -f $stamp && $(cat "$stamp") == "$key" ]] \
        && "$VENV/bin/python" -c 'import dragon' 2>/dev/null; then
    log "project already installed (pyproject.toml unchanged)"
    exit 0
fi

if [[ $(uname -m) == x86_64 && "${DRAGON_ALLOW_CUDA_TORCH:-0}" != 1 ]] \
        && ! "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("torch")' >/dev/null 2>&1; then
    torch_ver=$(sed -nE 's/^[[:space:]]*"torch *== *([0-9][0-9.]*)".*/\1/p' pyproject.toml | head -n1)
    # shellcheck source=scripts/cpu-torch-wheel.sh
    source "$ROOT/scripts/cpu-torch-wheel.sh"
    cpu_torch_wheel_dir "$torch_ver" >/dev/null \
        || die "$(cpu_torch_wheel_missing "$torch_ver")"
fi

t=$SECONDS
log "pip install -e '.[model,test]' into $VENV"
rm -f "$stamp"
"$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q -e '.[model,test]' \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) \
    || die "pip install -e '.[model,test]' failed"
"$VENV/bin/python" - <<'PYEOF' || die "the venv's torch is not the CPU build"
import torch
assert torch.version.cuda is None or __import__("os").environ.get("DRAGON_ALLOW_CUDA_TORCH") == "1", torch.__version__
print(f"setup-venv: torch {torch.__version__}", file=__import__("sys").stderr)
PYEOF
echo "$key" >"$stamp"
log "installed in $((SECONDS - t)) s"
