#!/usr/bin/env bash
# Install what DDM's tests and demo need on Debian 12, as root: the Debian
# packages of the test lab, then DDM itself with its test extras in editable mode.
#
# Progress goes to stderr. The last and only line on stdout is the Python
# interpreter that DDM was installed into, so that callers can run
#   python="$(scripts/setup.sh)"
#
# Environment:
#   PYTHON  interpreter to install into (default: python3). When it cannot
#           install packages (no pip, or Debian's "externally managed" system
#           Python), a virtual environment is created in REPO/.venv instead.
set -euo pipefail

# Keep stdout for the interpreter path alone.
exec 3>&1 1>&2

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lab_packages=(docker.io openssh-server openssh-client socat busybox-static iproute2 util-linux tar acl libcap2-bin zstd lz4)

if [[ "$(id -u)" != 0 ]]; then
    echo "error: scripts/setup.sh must run as root, to install Debian packages and run the test lab" >&2
    exit 1
fi

is_installed() {
    dpkg-query --show --showformat='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# Return success when the interpreter can pip-install into its own environment.
can_install_into() {
    local interpreter="$1"
    "$interpreter" -m pip --version >/dev/null 2>&1 || return 1
    "$interpreter" - <<'EOF'
import pathlib
import sys
import sysconfig

marker = pathlib.Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED"
in_venv = sys.prefix != sys.base_prefix
sys.exit(1 if marker.exists() and not in_venv else 0)
EOF
}

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    lab_packages+=(python3 python3-venv)
    python=python3
    use_venv=1
elif can_install_into "$python"; then
    use_venv=0
else
    lab_packages+=(python3-venv)
    use_venv=1
fi

missing=()
for package in "${lab_packages[@]}"; do
    is_installed "$package" || missing+=("$package")
done

if ((${#missing[@]} > 0)); then
    echo "setup: installing Debian packages: ${missing[*]}"

    # Keep the packages' maintainer scripts from starting dockerd, containerd or
    # sshd on this machine: the tests start their own inside lab namespaces.
    # policy-rc.d exit status 101 means "action not allowed" (invoke-rc.d(8)).
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi

    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install --yes --no-install-recommends "${missing[@]}"
fi

if ((use_venv)); then
    venv="$repo_root/.venv"
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "setup: $python cannot install packages; creating a virtual environment in $venv"
        "$python" -m venv "$venv"
    fi
    python="$venv/bin/python"
fi

echo "setup: installing DDM with test extras into $python"
"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e "${repo_root}[test]"

"$python" -c 'import sys; print(sys.executable)' >&3
