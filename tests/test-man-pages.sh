#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Every public call of libagenclient has a man page: for each symbol of
# client/libagenclient.sym, `man 3 SYMBOL` must find a page (its own, or a ".so" link to
# the page of its group) whose NAME section names the symbol. The pages are laid out as an
# install lays them out (MANPATH/man3/*.3), from the build directory.
#   test-man-pages.sh libagenclient.sym BUILD_DIR_WITH_THE_PAGES
set -euo pipefail

sym=${1:?libagenclient.sym} pages=${2:?directory of the built .3 pages}
if ! command -v man >/dev/null 2>&1; then
        if [[ ${CI:-} == true ]]; then
                echo "FAIL: man is not installed" >&2
                exit 1
        fi
        echo "SKIP: man is not installed" >&2
        exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/man3"
cp "$pages"/*.3 "$tmp/man3/"

failed=0 n=0
for s in $(sed -n 's/^[[:space:]]*\(agen_[a-z0-9_]*\);.*/\1/p' "$sym"); do
        n=$((n + 1))
        if [[ ! -e $tmp/man3/$s.3 ]]; then
                echo "FAIL: no man page $s.3"
                failed=$((failed + 1))
                continue
        fi
        # Rendered as man would: the .so followed, the NAME section names the call.
        out=$(cd "$tmp" && MANPATH=$tmp MANWIDTH=200 man -P cat 3 "$s" 2>&1 | col -b) || true
        name=$(sed -n '/^NAME/,/^SYNOPSIS/p' <<<"$out")
        if ! grep -qw -- "$s" <<<"$name"; then
                echo "FAIL: man 3 $s does not name it in NAME:"
                head -5 <<<"$out"
                failed=$((failed + 1))
        fi
        if ! grep -q -- "$s" <<<"$(sed -n '/^SYNOPSIS/,/^DESCRIPTION/p' <<<"$out")"; then
                echo "FAIL: man 3 $s has no synopsis of it"
                failed=$((failed + 1))
        fi
done
echo "man pages: $n public calls, $failed failed"
((n > 0 && failed == 0))
