#!/usr/bin/env bash
# Benchmark smoke test needs: tpchgen-cli (PyPI) to make TPC-H data. Idempotent; fast when
# it is present. (SmartNoise SQL is not needed by the tests: bench/smartnoise_setup.sh makes
# its own virtualenv when the full benchmark is run with --smartnoise.)
set -euo pipefail

if ! command -v tpchgen-cli >/dev/null 2>&1; then
    python -m pip install -q "tpchgen-cli>=1.0"
fi
