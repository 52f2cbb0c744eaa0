#!/usr/bin/env bash
# Run a named experiment preset (experiments/NAME.yaml) as a Hydra multirun sweep.
#   scripts/sweep.sh NAME [extra overrides...]     e.g. scripts/sweep.sh oneshot_llm hydra/launcher=local_parallel
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: scripts/sweep.sh NAME [overrides...]; presets: $(ls experiments/*.yaml | xargs -n1 basename | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
  exit 2
fi
name=$1; shift
exec "${PRUNE:-.venv/bin/prune}" run -m "+experiment=$name" "$@"
