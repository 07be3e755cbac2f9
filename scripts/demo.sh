#!/usr/bin/env bash
# Demo of DDM on the test lab, as root: create a volume of DEMO_SIZE_MIB MiB of
# random data plus a small tree on lab host h1, migrate it to h2 with ddmctl,
# then compare both copies with ddmverify. Exits non-zero if either fails.
#
# Environment:
#   DEMO_SIZE_MIB  MiB of random data in the volume (default: 1024)
#   DEMO_ROOT      lab directory, removed on exit (default: /var/tmp/ddm-demo)
#   DEMO_PORT      SSH port of the lab hosts (default: 2222)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
size_mib="${DEMO_SIZE_MIB:-1024}"
lab_root="${DEMO_ROOT:-/var/tmp/ddm-demo}"
port="${DEMO_PORT:-2222}"
volume=demo-data

if ! [[ "$size_mib" =~ ^[0-9]+$ ]]; then
    echo "error: invalid DEMO_SIZE_MIB '$size_mib': expected a whole number of MiB" >&2
    exit 2
fi

python="$("$repo_root/scripts/setup.sh")"
scripts_dir="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$scripts_dir:$PATH"
cd "$repo_root"

lab() {
    "$python" -m tests.lab "$@"
}

on_host() {
    local host="$1"
    shift
    lab exec --root "$lab_root" "$host" -- "$@"
}

# shellcheck disable=SC2317  # called by the EXIT trap
tear_down() {
    lab down --root "$lab_root" || echo "warning: tearing down the lab in $lab_root failed" >&2
}

echo "demo: starting the lab in $lab_root" >&2
trap tear_down EXIT
config="$(lab up --root "$lab_root" --hosts 2 --port "$port")"

# DDM's task records, caches and any SSH agent of the caller stay out of the demo.
export XDG_CONFIG_HOME="$lab_root/xdg/config" XDG_DATA_HOME="$lab_root/xdg/data" XDG_CACHE_HOME="$lab_root/xdg/cache"
mkdir -p "$XDG_CONFIG_HOME" "$XDG_DATA_HOME" "$XDG_CACHE_HOME"
unset SSH_AUTH_SOCK

echo "demo: creating volume $volume on h1 with $size_mib MiB of random data" >&2
on_host h1 docker volume create "$volume" >/dev/null
mountpoint="$(on_host h1 docker volume inspect --format '{{.Mountpoint}}' "$volume")"

# Runs inside h1 with the machine's own tools, writing straight into the
# mountpoint. Random data goes into files of at most 256 MiB.
# shellcheck disable=SC2016  # the script expands its own positional parameters
on_host h1 sh -c '
    set -eu
    data="$1"
    remaining="$2"
    mkdir -p "$data/blobs"
    index=0
    while [ "$remaining" -gt 0 ]; do
        chunk=$((remaining < 256 ? remaining : 256))
        head -c "$((chunk * 1048576))" /dev/urandom >"$data/blobs/blob-$index.bin"
        remaining=$((remaining - chunk))
        index=$((index + 1))
    done

    mkdir -p "$data/tree/etc" "$data/tree/var/log" "$data/tree/empty dir"
    printf "listen 8080\n" >"$data/tree/etc/app.conf"
    printf "secret\n" >"$data/tree/etc/token"
    chmod 0600 "$data/tree/etc/token"
    chown 1000:1000 "$data/tree/var/log"
    seq 1 1000 >"$data/tree/var/log/app.log"
    : >"$data/tree/empty file"
    ln -s ../etc/app.conf "$data/tree/var/config-link"
    ln "$data/tree/etc/app.conf" "$data/tree/etc/app.conf.hardlink"
    mkfifo "$data/tree/var/pipe"
    touch -d "2001-02-03 04:05:06" "$data/tree/etc/app.conf"
' sh "$mountpoint" "$size_mib"

status=0

echo "demo: ddmctl --config $config migrate --from h1 --to h2 --volume $volume --verify full --yes" >&2
started=$SECONDS
if ddmctl --config "$config" migrate --from h1 --to h2 --volume "$volume" --verify full --yes; then
    echo "demo: migration finished in $((SECONDS - started)) s" >&2
else
    migrate_status=$?
    echo "demo: ddmctl migrate failed with exit status $migrate_status" >&2
    status=1
fi

echo "demo: ddmverify --config $config --from h1 --to h2 --volume $volume --deep" >&2
if ddmverify --config "$config" --from h1 --to h2 --volume "$volume" --deep; then
    echo "demo: ddmverify found both copies equal" >&2
else
    verify_status=$?
    echo "demo: ddmverify failed with exit status $verify_status" >&2
    status=1
fi

exit "$status"
