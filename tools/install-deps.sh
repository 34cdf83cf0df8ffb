#!/usr/bin/env bash
# Installs the system packages blockrepl's tests, local runs and benchmarks need (Debian 12).
# Idempotent and quick when everything is present: each package is checked with dpkg-query,
# and apt-get runs only for the missing ones.
set -euo pipefail

# Installed with --no-install-recommends like the rest; qemu-system-common provides
# qemu-storage-daemon (used by the replication benchmark) without pulling in a full qemu.
# libiscsi-bin (iscsi-test-cu, iscsi-ls, iscsi-inq, iscsi-perf) and qemu-block-extra (qemu's iscsi:// driver)
# test the iSCSI front end.
PACKAGES=(qemu-utils libnbd-bin python3-libnbd fio nbdkit jq procps qemu-system-common libiscsi-bin qemu-block-extra)

die() { echo "install-deps: $*" >&2; exit 1; }

is_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ "$status" == "install ok installed" ]]
}

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian 12 (apt/dpkg) only"

missing=()
for p in "${PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if ((${#missing[@]} > 0)); then
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo)
        else
            die "missing packages (${missing[*]}) and not root, and sudo is not available: run as root"
        fi
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    for p in "${missing[@]}"; do
        is_installed "$p" || die "package $p still not installed after apt-get install"
    done
fi

# The gRPC interop tests run a standard gRPC peer (@grpc/grpc-js) under node; Debian's nodejs and npm are
# installed only when no node is on PATH (a newer node from elsewhere is kept).
if ! command -v node >/dev/null 2>&1; then
    SUDO=()
    [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
    echo "install-deps: installing nodejs npm (node not found)"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
fi
command -v npm >/dev/null 2>&1 || die "node is installed but npm is not: install it with 'apt-get install -y nodejs npm'"

# The nbd Python module lives in Debian's python3 (python3-libnbd); another python3 on PATH may lack it.
[[ -x /usr/bin/python3 ]] || die "/usr/bin/python3 not found (install python3)"
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 \
    || die "/usr/bin/python3 cannot 'import nbd' (python3-libnbd is broken or for another python)"

command -v dotnet >/dev/null 2>&1 \
    || die "dotnet not found on PATH: install the .NET 10 SDK (https://learn.microsoft.com/dotnet/core/install/linux-debian)"
dotnet_version=$(dotnet --version 2>/dev/null) || die "'dotnet --version' failed: is a .NET SDK (not only a runtime) installed?"
[[ "${dotnet_version%%.*}" =~ ^[0-9]+$ && "${dotnet_version%%.*}" -ge 10 ]] \
    || die "dotnet SDK $dotnet_version found, but blockrepl needs the .NET 10 SDK"

echo "install-deps: ok (${#PACKAGES[@]} packages present, python3 nbd module ok, node $(node --version), dotnet $dotnet_version)"
