#!/usr/bin/env bash
# Create bench/.venv-smartnoise with smartnoise-sql (it pins opendp 0.14, older than sqlgate's
# 0.16, so it cannot share the machine python). Idempotent: a ready venv is left as it is.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-smartnoise"
python="${PYTHON:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import snsql, duckdb" 2>/dev/null; then
    echo "smartnoise venv ready: $venv"
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# duckdb reads the same Parquet files; pyarrow is pandas' Parquet engine.
"$venv/bin/python" -m pip install --quiet "smartnoise-sql==1.0.*" duckdb pyarrow
"$venv/bin/python" -c "import snsql; print('smartnoise-sql', snsql.__name__, 'installed in', '$venv')"
