#!/usr/bin/env bash
# Install the test dependencies with scripts/setup.sh, then run DDM's whole test
# suite with pytest as root. Extra arguments go to pytest; the exit status is
# pytest's.
#
# The integration tests start their own lab of Docker hosts in network
# namespaces (tests/lab); see tests/conftest.py for DDM_LAB_PORT and DDM_LAB_ROOT.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$("$repo_root/scripts/setup.sh")"

cd "$repo_root"
exec "$python" -m pytest -q tests "$@"
