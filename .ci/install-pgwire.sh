#!/usr/bin/env bash
# PG wire client tests drive real clients: psql (postgresql-client), pgJDBC
# (libpostgresql-jdbc-java, jar under /usr/share/java) with Java, openssl (a throwaway TLS
# certificate for the TLS test) and node-postgres (npm `pg`,
# installed into tests/pgwire/node, gitignored node_modules). Python clients come from [dev].
# Idempotent; fast when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
ls /usr/share/java/postgresql*.jar >/dev/null 2>&1 || missing+=(libpostgresql-jdbc-java)
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d tests/pgwire/node/node_modules/pg ]; then
    npm install --silent --no-audit --no-fund --prefix tests/pgwire/node pg >/dev/null
fi
