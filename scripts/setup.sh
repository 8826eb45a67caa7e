#!/usr/bin/env bash
# Installs the Debian 12 packages agend needs to build, test and benchmark.
# Idempotent: packages already present are left alone. Needs root (apt-get).
set -euo pipefail

packages=(
        build-essential meson ninja-build pkg-config
        libev-dev libsqlite3-dev libsystemd-dev libjson-c-dev libcmocka-dev
        sqlite3 scdoc valgrind util-linux procps bash-completion
)
# tests/test-varlink-go.sh: a varlink client that is not ours (Debian's Go library).
packages+=(golang-go golang-github-varlink-go-dev)
# The libFuzzer harnesses (tests/fuzz, -Dfuzz=true) build with clang; libFuzzer itself is in
# Debian's compiler-rt package.
packages+=(clang libclang-rt-14-dev)
# The systemd integration tests boot a real systemd in a container.
packages+=(systemd-container debootstrap)
# The Python client (client/python) is tested with Debian's python3 and these.
packages+=(python3 python3-pytest python3-pytest-asyncio python3-trio mypy)
# Cluster scope (issue 16): the etcd client is libcurl on libev; its tests and the bench run
# a 3-member etcd cluster of Debian's etcd-server on loopback.
packages+=(libcurl4-openssl-dev etcd-server)

missing=()
for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
        if [[ $(id -u) -ne 0 ]]; then
                sudo=sudo
        else
                sudo=
        fi
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
