#!/usr/bin/env bash
# HTTP server tests: validate the OpenAPI document (tests/server/test_openapi.py).
set -euo pipefail
python -c "import openapi_spec_validator" 2>/dev/null || python -m pip install "openapi-spec-validator>=0.7"
