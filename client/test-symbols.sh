#!/bin/sh
# SPDX-License-Identifier: MIT
# Checks that the shared library exports exactly the symbols of its version script, and
# that every one of them is prefixed agen_.  Usage: test-symbols.sh LIBRARY SYMFILE
set -eu
lib=$1
sym=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

sed -n 's/^[[:space:]]*\(agen_[A-Za-z0-9_]*\);.*/\1/p' "$sym" | sort -u >"$tmp/expected"
nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVWiu]$/ { sub(/@.*/, "", $3); print $3 }' |
        grep -v '^LIBAGENCLIENT_' | sort -u >"$tmp/exported"

status=0
if ! diff -u "$tmp/expected" "$tmp/exported"; then
        echo "exported symbols differ from $sym (- expected, + exported)" >&2
        status=1
fi
if grep -v '^agen_' "$tmp/exported"; then
        echo "symbols above are exported without the agen_ prefix" >&2
        status=1
fi
n=$(wc -l <"$tmp/expected")
[ "$n" -gt 0 ] || { echo "no symbols found in $sym" >&2; exit 1; }
exit $status
