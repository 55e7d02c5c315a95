#!/usr/bin/env bash
# Create the peer virtual environments of the step-time benchmark, one per peer,
# under bench/peers/.venvs/ (git-ignored). Only PyPI is used; no model weights
# or data are downloaded (the peer scripts build random-weight models).
#
#   bash bench/peers/setup_venvs.sh [mace|nequip|tensornet|all]   (default: all)
#
# Idempotent: a venv whose packages already import is left alone; a half-made
# one is completed. PEER_PYTHON selects the interpreter (default: python3.11 or
# python3). Peers get a CPU torch 2.13.0 (this machine keeps that wheel on disk;
# elsewhere pip fetches it from PyPI) and never the project's own packages.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="$HERE/.venvs"
PYTHON="${PEER_PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_PIN="torch==2.13.0"
OPENMM_PINS=("openmm==8.6.1" "openmmml==1.8")

# Packages of each peer (besides torch and OpenMM), and the import that proves the venv works.
peer_packages() {
    case "$1" in
        mace) echo "mace-torch==0.3.16 e3nn==0.4.4" ;;
        nequip) echo "nequip==0.19.1 e3nn==0.6.0" ;;
        tensornet) echo "torchmd-net==3.1.0" ;;
        *) echo "unknown peer '$1' (choose mace, nequip, tensornet or all)" >&2; return 2 ;;
    esac
}

peer_check() {
    case "$1" in
        mace) echo "import mace.modules, openmmml, openmm; assert hasattr(openmm, 'PythonForce')" ;;
        nequip) echo "import nequip.model, openmmml, openmm; assert hasattr(openmm, 'PythonForce')" ;;
        tensornet) echo "import torchmdnet.models.model, openmmml, openmm; assert hasattr(openmm, 'PythonForce')" ;;
    esac
}

setup_peer() {
    local peer="$1" venv="$VENVS/$1"
    local packages check
    packages="$(peer_packages "$peer")"
    check="$(peer_check "$peer")"
    if [[ -x "$venv/bin/python" ]] && TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        echo "[$peer] $venv is ready"
        return 0
    fi
    echo "[$peer] creating $venv with $("$PYTHON" --version)"
    mkdir -p "$VENVS"
    [[ -x "$venv/bin/python" ]] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip wheel
    # torch first, then everything else with torch held at the same release.
    "$venv/bin/python" -m pip install --quiet "$TORCH_PIN"
    local constraints="$venv/peer-constraints.txt"
    echo "$TORCH_PIN" > "$constraints"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet -c "$constraints" $packages "${OPENMM_PINS[@]}"
    if ! TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "$venv/bin/python" -c "$check"; then
        echo "[$peer] the venv was built but its packages do not import" >&2
        return 1
    fi
    echo "[$peer] ready: $(du -sh "$venv" | cut -f1)"
}

main() {
    local target="${1:-all}"
    local peers
    if [[ "$target" == all ]]; then peers=(mace nequip tensornet); else peers=("$target"); fi
    for peer in "${peers[@]}"; do
        peer_packages "$peer" >/dev/null
        setup_peer "$peer"
    done
}

main "$@"
