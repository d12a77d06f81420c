#!/usr/bin/env bash
# Backend + federation test needs: a PostgreSQL server (binaries only: tests start their own
# throwaway server on 127.0.0.1), psycopg 3, pyspark 4 (Spark local mode) and a Java 17 runtime
# for it, and the openssl CLI (the router's mTLS test makes a throwaway CA). Idempotent; fast
# when everything is present.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    packages+=(postgresql)
fi
if ! command -v java >/dev/null 2>&1; then
    packages+=(openjdk-17-jre-headless)
fi
if ! command -v openssl >/dev/null 2>&1; then
    packages+=(openssl)
fi
if [ "${#packages[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! python -c "import psycopg" >/dev/null 2>&1; then
    python -m pip install -q "psycopg[binary]>=3.2"
fi
if ! python -c "import pyspark, sys; sys.exit(0 if int(pyspark.__version__.split('.')[0]) >= 4 else 1)" >/dev/null 2>&1; then
    python -m pip install -q "pyspark>=4.0,<5"
fi
