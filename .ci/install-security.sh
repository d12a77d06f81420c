#!/usr/bin/env bash
# Security suite needs: schemathesis (OpenAPI fuzzing of the HTTP API) and psycopg 3 (the PG
# wire load and fuzz tests). Idempotent; fast when both are present.
set -euo pipefail

if ! python -c "import schemathesis" >/dev/null 2>&1; then
    python -m pip install -q "schemathesis>=4.0"
fi

if ! python -c "import psycopg" >/dev/null 2>&1; then
    python -m pip install -q "psycopg[binary]>=3.2"
fi
