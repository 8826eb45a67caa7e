#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The bash completion of agenctl (client/agenctl/agenctl.bash), driven the way bash drives
# it: COMP_WORDS split as readline splits them ("=" is a word of its own), COMP_CWORD,
# then the completion function, then COMPREPLY compared. A stand-in `agenctl` on PATH
# answers the --json queries for resources and lease ids and records its arguments. Runs
# twice: with bash's plain completion, and with the bash-completion package loaded (if it
# is installed; in CI it is, scripts/setup.sh installs it).
#   test-completion.sh PATH/TO/agenctl.bash
set -uo pipefail

script=${1:?usage: test-completion.sh agenctl.bash}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/agenctl" <<'FAKE'
#!/bin/sh
echo "$*" >>"$AGENCTL_FAKE_LOG"
case " $* " in
*" resources "*) echo '{"resources":[{"name":"gpu","capacity":1},{"name":"pool","capacity":3}]}' ;;
*" list "*) echo '{"leases":[{"id":"0123456789abcdef"},{"id":"fedcba9876543210"}],"waiters":[]}' ;;
esac
FAKE
chmod +x "$tmp/agenctl"
export PATH="$tmp:$PATH" AGENCTL_FAKE_LOG="$tmp/log"

failed=0 total=0
# check NAME EXPECTED WORD...: the last WORD is the one being completed; EXPECTED is the
# sorted COMPREPLY, space-separated ("" for none). EXPECTED "~X" means: contains X.
check() {
        local name=$1 expected=$2
        shift 2
        COMP_WORDS=("$@")
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        COMP_LINE="${COMP_WORDS[*]}"
        COMP_POINT=${#COMP_LINE}
        COMPREPLY=()
        # compopt (bash-completion's _command_offset) complains outside a real completion.
        _agenctl agenctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]-}" 2>>"$tmp/stderr"
        local got
        got=$(printf '%s\n' "${COMPREPLY[@]}" | sed '/^$/d' | sort -u | tr '\n' ' ' | sed 's/ $//')
        total=$((total + 1))
        if [[ $expected == "~"* ]]; then
                [[ " $got " == *" ${expected#\~} "* ]] && return
        elif [[ $got == "$expected" ]]; then
                return
        fi
        echo "FAIL [$mode] $name: words (${COMP_WORDS[*]}) completed to '${got:0:200}', expected '$expected'"
        failed=$((failed + 1))
}

run_cases() {
        check "--json=<TAB>" "off pretty short" agenctl --json =
        check "--json=<TAB> (empty word)" "off pretty short" agenctl --json = ""
        check "--json=sh<TAB>" "short" agenctl --json = sh
        check "list --json=p<TAB>" "pretty" agenctl list --json = p
        check "--json <TAB> completes the verb" "~list" agenctl --json ""
        check "--json <TAB> completes the verb (check)" "~check" agenctl --json ""
        check "run offers no --json" "" agenctl run --js
        check "run offers --hold-until" "--hold-until" agenctl run --hol
        check "list offers --json" "--json" agenctl list --js
        check "run --hold-until=<TAB>" "all command" agenctl run --hold-until = ""
        check "run --hold-until <TAB>" "all command" agenctl run --hold-until ""
        check "--timeout <TAB>: nothing" "" agenctl run --timeout ""
        check "show <TAB>: lease ids" "0123456789abcdef fedcba9876543210" agenctl show ""
        check "revoke f<TAB>" "fedcba9876543210" agenctl revoke f
        check "run <TAB>: resources" "gpu pool" agenctl run ""
        check "check <TAB>: resources" "gpu pool" agenctl check ""
        check "check gpu <TAB>: nothing" "" agenctl check gpu ""
        check "watch --no-r<TAB>" "--no-reconnect" agenctl watch --no-r
        check "run gpu -- ech<TAB>: commands" "~echo" agenctl run gpu -- ech
        check "ver<TAB>" "" agenctl ver
        : >"$AGENCTL_FAKE_LOG"
        check "--socket=/x show <TAB>" "0123456789abcdef fedcba9876543210" agenctl --socket = /x show ""
        if ! grep -q -- "--socket /x" "$AGENCTL_FAKE_LOG"; then
                echo "FAIL [$mode] the id query did not go to --socket /x: $(cat "$AGENCTL_FAKE_LOG")"
                failed=$((failed + 1))
        fi
}

mode=plain
( . "$script"; run_cases; exit $failed ) || failed=$?
plain_failed=$failed
failed=0
bc=/usr/share/bash-completion/bash_completion
if [[ -r $bc ]]; then
        mode=bash-completion
        ( . "$bc"; . "$script"; run_cases; exit $failed ) || failed=$?
else
        echo "SKIP the bash-completion package is not installed: only the plain mode ran"
fi
failed=$((failed + plain_failed))
echo "completion: $failed failed"
((failed == 0))
