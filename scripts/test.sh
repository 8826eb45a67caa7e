#!/usr/bin/env bash
# The whole test suite: installs what it needs, then builds twice (a plain build, and an
# ASan+UBSan build with -Werror) and runs every test suite on each. The unit suite also
# runs under valgrind in the plain build, and each libFuzzer harness runs for a few seconds
# ($AGEND_FUZZ_SECONDS, default 8) in a clang build. Exits non-zero on any failure; under CI=true a
# skipped test is a failure too, because CI machines must have everything.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

jobs=$(nproc)
passed=0
failed=0
skipped=0

count() {       # count LOG: adds the results of one `meson test` run's JSON log
        local log=$1 p f s
        p=$(grep -c '"result": "OK"' "$log" || true)
        f=$(grep -cE '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' "$log" || true)
        s=$(grep -c '"result": "SKIP"' "$log" || true)
        passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

run() {         # run BUILD_DIR [meson test args...]
        local dir=$1; shift
        local rc=0 stamp log n=0
        # Each pass writes its own log (testlog.json, testlog-valgrind.json for --wrap=valgrind,
        # ...): count the ones this pass wrote, whatever meson named them.
        stamp=$(mktemp)
        meson test -C "$dir" --print-errorlogs --num-processes "$jobs" "$@" || rc=$?
        for log in "$dir"/meson-logs/testlog*.json; do
                [[ -f $log && $log -nt $stamp ]] || continue
                count "$log"
                n=$((n + 1))
        done
        rm -f "$stamp"
        if ((n == 0)); then
                echo "test.sh: meson test in $dir wrote no log" >&2
                rc=1
        fi
        return $rc
}

status=0
# Every optional part is required here: with `auto`, a missing dependency would silently
# drop whole test groups (all cmocka tests) and the run would still be green.
features=(-Dcmocka=enabled -Dsystemd=enabled -Dman=enabled)
meson setup build-test --reconfigure -Dbuildtype=debug "${features[@]}" >/dev/null 2>&1 || \
        meson setup build-test -Dbuildtype=debug "${features[@]}"
ninja -C build-test
run build-test --no-suite slow || status=1

meson setup build-asan --reconfigure -Dbuildtype=debug -Dwerror=true "${features[@]}" \
        -Db_sanitize=address,undefined -Db_lundef=false >/dev/null 2>&1 || \
        meson setup build-asan -Dbuildtype=debug -Dwerror=true "${features[@]}" \
                -Db_sanitize=address,undefined -Db_lundef=false
ninja -C build-asan
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run build-asan --no-suite slow --no-suite systemd || status=1
unset ASAN_OPTIONS UBSAN_OPTIONS

if [[ $(meson test -C build-test --list 2>/dev/null) == *unit* ]]; then
        # Guards inside the tests scale by the same factor as meson's timeouts
        # (tests/helper-timeout.h).
        AGEND_TEST_TIMEOUT_MULTIPLIER=10 run build-test --suite unit \
                --wrap='valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect --track-fds=no' \
                --timeout-multiplier 10 || status=1
fi

# Fuzzing: each libFuzzer harness (tests/fuzz/) for a few seconds from its seed corpus, in a
# clang build of its own; new inputs go to a scratch directory, crashes to build-fuzz/.
fuzz_seconds=${AGEND_FUZZ_SECONDS:-8}
CC=clang meson setup build-fuzz --reconfigure -Dbuildtype=debug -Dfuzz=true -Dbench=false \
        -Db_sanitize=address,undefined -Db_lundef=false >/dev/null 2>&1 || \
        CC=clang meson setup build-fuzz -Dbuildtype=debug -Dfuzz=true -Dbench=false \
                -Db_sanitize=address,undefined -Db_lundef=false
fuzzers=(vl json scan config dispatch)
# Seed corpora; the JSON parser's is the y_/n_ corpus of the unit tests.
declare -A corpus=([vl]=tests/fuzz/vl [json]=tests/data [scan]=tests/fuzz/scan [config]=tests/fuzz/config [dispatch]=tests/fuzz/dispatch)
ninja -C build-fuzz "${fuzzers[@]/#/tests/fuzz/fuzz-}"
for f in "${fuzzers[@]}"; do
        scratch=$(mktemp -d)
        if build-fuzz/tests/fuzz/fuzz-$f -max_total_time="$fuzz_seconds" -print_final_stats=1 \
                        -artifact_prefix=build-fuzz/ "$scratch" "${corpus[$f]}" >build-fuzz/fuzz-$f.log 2>&1; then
                passed=$((passed + 1))
                echo "fuzz-$f: $(grep -o 'stat::number_of_executed_units: [0-9]*' build-fuzz/fuzz-$f.log | cut -d' ' -f2) runs, no finding"
        else
                failed=$((failed + 1))
                status=1
                tail -n 40 build-fuzz/fuzz-$f.log >&2
                echo "fuzz-$f: FAILED (reproducer in build-fuzz/, log build-fuzz/fuzz-$f.log)" >&2
        fi
        rm -rf "$scratch"
done

if [[ ${CI:-} == true && $skipped -gt 0 ]]; then
        echo "CI: $skipped test(s) skipped; CI machines must run everything" >&2
        status=1
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit $status
