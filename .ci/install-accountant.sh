#!/usr/bin/env bash
# Accountant test needs: a PostgreSQL server (binaries only: the tests run their own throwaway
# server on 127.0.0.1) and psycopg 3. Idempotent; fast when both are present.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! dpkg -s postgresql >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

if ! python -c "import psycopg" >/dev/null 2>&1; then
    python -m pip install -q "psycopg[binary]>=3.2"
fi
