#!/usr/bin/env bash
# Client + Trino protocol test needs: the `trino` Python client (>= 0.340 for
# allow_insecure_auth, used against the plain-http test server), SQLAlchemy, and the openssl
# program (a self-signed certificate for the HTTPS tests). Idempotent; fast when present.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v openssl >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi

if ! python - <<'PY' >/dev/null 2>&1
import sqlalchemy
from importlib.metadata import version
major, minor = (int(p) for p in version("trino").split(".")[:2])
assert (major, minor) >= (0, 340)
PY
then
    python -m pip install -q "trino>=0.340" "sqlalchemy>=2.0"
fi
