#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# agend driven by a varlink client that is not ours: Debian's Go library
# (golang-github-varlink-go-dev). Builds tests/varlink-go/main.go offline, in GOPATH mode
# against /usr/share/gocode, starts agend on a temporary socket and runs it.
#   test-varlink-go.sh AGEND_BINARY SOURCE_DIR BUILD_DIR
# Without go or the library: skipped (77) on a developer's machine, a failure under
# CI=true (scripts/setup.sh installs both).
set -euo pipefail

agend=${1:?agend binary} src=${2:?source dir of the Go program} build=${3:?build dir}
gocode=/usr/share/gocode

missing=""
command -v go >/dev/null 2>&1 || missing="go (golang-go)"
[[ -d $gocode/src/github.com/varlink/go/varlink ]] || missing="${missing:+$missing, }the Go varlink library (golang-github-varlink-go-dev)"
if [[ -n $missing ]]; then
        if [[ ${CI:-} == true ]]; then
                echo "FAIL: $missing not installed; scripts/setup.sh installs it" >&2
                exit 1
        fi
        echo "SKIP: $missing not installed (scripts/setup.sh installs it)" >&2
        exit 77
fi

build=$(realpath -m "$build")
mkdir -p "$build/go-cache"
export GOPATH=$gocode GO111MODULE=off GOFLAGS= GOPROXY=off GOCACHE=$build/go-cache GOTOOLCHAIN=local
go build -o "$build/varlink-go" "$src/main.go"

tmp=$(mktemp -d)
pid=
cleanup() {
        [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
        rm -rf "$tmp"
}
trap cleanup EXIT
: >"$tmp/agend.conf"
"$agend" --socket "$tmp/io.agend.Lease" --state-dir "$tmp" --config "$tmp/agend.conf" 2>"$tmp/agend.log" &
pid=$!
for _ in $(seq 1 150); do
        [[ -S $tmp/io.agend.Lease ]] && break
        sleep 0.1
done
if ! "$build/varlink-go" "unix:$tmp/io.agend.Lease"; then
        echo "--- agend log ---" >&2
        cat "$tmp/agend.log" >&2
        exit 1
fi
