#!/usr/bin/env bash
# agend under a real systemd: boots a container (scripts/systemd-harness.sh), installs the
# build into it with `meson install --destdir`, and checks the units the way users meet
# them. TAP output; exits 1 on any failure, 77 only if this machine cannot boot a
# container (never under CI=true: CI machines must run it).
#
#   AGEND_BUILD_ROOT=build-dir tests/test-systemd.sh
#
# Environment: AGEND_BUILD_ROOT (required; meson test sets it), AGEND_TEST_CACHE (see the
# harness), AGEND_TEST_LEASES (leases for the restart timing, default 10000),
# KEEP_MACHINE=1 (leave the container running for a look; tear down by hand with
# MACHINE=... scripts/systemd-harness.sh teardown).
set -uo pipefail
# shellcheck disable=SC2317 # functions run indirectly (check, wait_for, restart_check)

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${AGEND_BUILD_ROOT:?set AGEND_BUILD_ROOT to the meson build directory}
H=$SRC/scripts/systemd-harness.sh
N_LEASES=${AGEND_TEST_LEASES:-10000}
export MACHINE=agend-t$$-$RANDOM
export LOG_DIR=${LOG_DIR:-$BUILD/meson-logs/systemd}
mkdir -p "$LOG_DIR"
VL=/usr/local/libexec/agend-test/varlink

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
check() {       # check DESCRIPTION COMMAND...: ok if COMMAND succeeds
        local d=$1; shift
        if "$@"; then ok "$d"; else not_ok "$d"; fi
}
diag() { sed 's/^/# /'; }
note() { echo "# $*"; }
bail() { echo "Bail out! $*"; exit 1; }

skip_all() {
        if [[ ${CI:-} == true ]]; then bail "$* (CI machines must boot the container)"; fi
        echo "1..0 # SKIP $*"
        exit 77
}

cx() { "$H" exec "$@"; }                        # a command inside the container
prop() { cx systemctl show -p "$2" --value "$1"; }
ms_now() { echo $(($(date +%s%N) / 1000000)); }

# wait_for SECONDS COMMAND...: poll COMMAND every 50 ms until it succeeds.
wait_for() {
        local end=$(($(ms_now) + $1 * 1000)); shift
        until "$@"; do
                (($(ms_now) > end)) && return 1
                sleep 0.05
        done
}
is_active() { [[ $(prop agend.service ActiveState) == active && $(prop agend.service SubState) == running ]]; }
state_is() { [[ $(cx cat "$1" 2>/dev/null) == "$2"* ]]; }
restarted_since() {     # restarted_since NRESTARTS OLD_PID: systemd restarted agend and it is up
        [[ $(prop agend.service NRestarts) -gt $1 && $(prop agend.service MainPID) != "$2" ]] && is_active
}

# --- set-up ---------------------------------------------------------------------------------
if "$H" check 2>/dev/null; then :; else
        rc=$?
        [[ $rc -eq 77 ]] && skip_all "$("$H" check 2>&1 | sed 's/^harness: //')"
        bail "harness check failed ($rc)"
fi
"$H" setup || bail "cannot build the container's base rootfs"

cleanup() {
        if [[ ${KEEP_MACHINE:-} == 1 ]]; then
                echo "# kept: MACHINE=$MACHINE $H teardown" >&2
        else
                "$H" teardown >/dev/null 2>&1
        fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ROOT=$("$H" create) || bail "cannot create the container"
meson install -C "$BUILD" --no-rebuild --quiet --destdir "$ROOT" >"$LOG_DIR/install.log" 2>&1 ||
        { diag <"$LOG_DIR/install.log"; bail "meson install --destdir failed"; }
install -D -m 0755 "$SRC/tests/systemd-varlink.py" "$ROOT$VL"
# Test-only settings, as a drop-in an administrator would write: a short watchdog so the
# watchdog check takes seconds, no start limit for the many restarts, and no core files.
mkdir -p "$ROOT/etc/systemd/system/agend.service.d"
cat >"$ROOT/etc/systemd/system/agend.service.d/50-test.conf" <<'EOF'
[Unit]
StartLimitIntervalSec=0
[Service]
WatchdogSec=3s
LimitCORE=0
EOF
t0=$(ms_now)
"$H" start 2>&1 | diag
cx true 2>/dev/null || bail "the container did not boot (logs in $LOG_DIR)"
note "container $MACHINE booted in $(($(ms_now) - t0)) ms"
cx ldconfig

UNITDIR=$(cx systemctl show -p FragmentPath --value agend.service)
UNITDIR=${UNITDIR%/*}
[[ -n $UNITDIR ]] || bail "agend.service is not installed where systemd finds it"
note "units in $UNITDIR"
HAVE_AGENCTL=0
cx sh -c 'command -v agenctl' >/dev/null 2>&1 && HAVE_AGENCTL=1

# --- static checks --------------------------------------------------------------------------
out=$(cx systemd-analyze verify "$UNITDIR/agend.socket" "$UNITDIR/agend.service" 2>&1); rc=$?
[[ -n $out ]] && diag <<<"$out"
check "systemd-analyze verify agend.socket agend.service: no errors, no warnings" \
        test $rc -eq 0 -a -z "$out"

out=$(cx systemd-analyze security agend.service --no-pager --threshold=20 2>&1); rc=$?
score=$(sed -n 's/.*Overall exposure level for agend.service: \([0-9.]*\).*/\1/p' <<<"$out")
grep '✗' <<<"$out" | diag
check "systemd-analyze security agend.service: ${score:-?} <= 2.0" \
        awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }'

check "sysusers.d created the system user agend" cx id -u agend
check "tmpfiles.d copied the default configuration to /etc/agend/agend.conf" \
        cx test -f /etc/agend/agend.conf -a -d /etc/agend/resources.d

# --- socket activation ----------------------------------------------------------------------
cx systemctl enable --now agend.socket 2>&1 | diag
check "agend.socket listens, agend.service not yet started" \
        test "$(prop agend.socket ActiveState)" = active -a "$(prop agend.service ActiveState)" = inactive
check "socket /run/agend/io.agend.Lease has mode 0666" \
        test "$(cx stat -c %a /run/agend/io.agend.Lease)" = 666
out=$(cx "$VL" call org.varlink.service.GetInfo 2>&1)
check "first connection starts agend.service (socket activation) and gets an answer" \
        test "$(prop agend.service ActiveState)" = active -a -n "$out"
diag <<<"$out"

# --- systemctl start/stop, status, identity -------------------------------------------------
cx systemctl stop agend.service 2>&1 | grep -v -e '^Warning: Stopping agend.service' -e '^  agend.socket$' | diag
check "systemctl stop agend: inactive, socket still listening, socket file kept" \
        test "$(prop agend.service ActiveState)" = inactive -a "$(prop agend.socket ActiveState)" = active \
        -a "$(cx stat -c %F /run/agend/io.agend.Lease)" = socket
check "systemctl start agend: active (running)" cx systemctl start agend
is_active || not_ok "agend.service is $(prop agend.service ActiveState)/$(prop agend.service SubState)"
out=$(cx "$VL" call Status)
diag <<<"$out"
check "Status through /run/agend/io.agend.Lease (varlink)" grep -q '"version"' <<<"$out"
if ((HAVE_AGENCTL)); then
        out=$(cx agenctl status 2>&1); rc=$?
        diag <<<"$out"
        check "agenctl status through /run/agend/io.agend.Lease" test $rc -eq 0
else
        note "agenctl is not built yet: varlink calls only"
fi
sleep 1.1       # STATUS= is sent at most once a second, after a change
cx "$VL" call Status >/dev/null
out=$(cx systemctl status agend --no-pager -n 0 2>&1)
diag <<<"$out"
check "systemctl status agend shows the daemon's STATUS= text" \
        grep -Eq 'Status: ".*[0-9]+ leases' <<<"$out"
pid=$(prop agend.service MainPID)
check "agend runs as the system user agend, not root" \
        test "$(cx ps -o user= -p "$pid" | tr -d ' ')" = agend
check "database in the StateDirectory /var/lib/agend (agend-owned)" \
        test "$(cx stat -c %U "/var/lib/agend/agend.db" 2>/dev/null)" = agend
check "RuntimeDirectory /run/agend owned by agend" test "$(cx stat -c %U /run/agend)" = agend

out=$(cx "$VL" owner whoami-root)
diag <<<"root: $out"
check "a root client is identified as uid 0" grep -q '"uid": 0' <<<"$out"
out=$(cx systemd-run --quiet --wait --pipe --collect --service-type=exec --unit=agend-test-nobody \
        -p User=nobody "$VL" owner whoami-nobody 2>&1)
diag <<<"nobody: $out"
nobody=$(cx id -u nobody)
check "a client running as another uid ($nobody) is identified as that uid, by SO_PEERCRED" \
        grep -q "\"uid\": $nobody," <<<"$out"
check "... its command name is read from /proc/PID/comm despite the sandbox" grep -q '"comm": "varlink"' <<<"$out"
check "... and its systemd unit by sd_pid_get_unit" grep -q '"unit": "agend-test-nobody.service"' <<<"$out"

# --- a held lease across restarts -----------------------------------------------------------
cx mkdir -p /run/agend-test
cx systemd-run --quiet --unit=agend-test-holder --service-type=exec "$VL" hold gpu /run/agend-test/holder
wait_for 10 state_is /run/agend-test/holder granted || not_ok "holder got no lease"
read -r _ lid ltok hpid _ <<<"$(cx cat /run/agend-test/holder)"
note "holder pid $hpid holds lease $lid (token $ltok)"

# restart_check NAME REASON COMMAND...: COMMAND brings agend down (systemd restarts it);
# meanwhile a prober keeps trying to take "gpu"; the holder must get its lease back, with
# the same id and token, and the prober never.
restart_check() {
        local name=$1 reclaims; shift
        reclaims=$(cx cat /run/agend-test/holder | awk '{ print $5 }')
        cx rm -f /run/agend-test/probe.stop
        "$H" exec "$VL" probe gpu /run/agend-test/probe.stop >"$LOG_DIR/probe.log" 2>&1 &
        local prober=$!
        sleep 0.3
        local t0; t0=$(ms_now)
        "$@"
        wait_for 60 state_is /run/agend-test/holder "reclaimed $lid $ltok $hpid $((reclaims + 1))"
        local rc=$? t1; t1=$(ms_now)
        note "$name: holder had its lease back after $((t1 - t0)) ms"
        sleep 0.3
        cx touch /run/agend-test/probe.stop
        wait "$prober"
        diag <"$LOG_DIR/probe.log"
        check "$name: the holder reclaimed its lease (same id and token)" test $rc -eq 0
        check "$name: no other client got the lease meanwhile" \
                grep -q '"granted": 0,' "$LOG_DIR/probe.log"
        rm -f "$LOG_DIR/probe.log"
        out=$(cx "$VL" call List '{"resource": "gpu"}')
        check "$name: List shows the lease held by the holder's pid" \
                grep -q "\"id\": \"$lid\".*\"pid\": $hpid" <<<"$out"
}

do_restart() {
        local t0; t0=$(ms_now)
        cx systemctl restart agend
        note "systemctl restart agend took $(($(ms_now) - t0)) ms"
}
restart_check "systemctl restart agend" do_restart

do_kill() {
        local n0 p0; n0=$(prop agend.service NRestarts); p0=$(prop agend.service MainPID)
        cx systemctl kill -s KILL agend
        wait_for 20 restarted_since "$n0" "$p0"
        check "systemctl kill -s KILL agend: systemd restarted it (NRestarts $n0 -> $(prop agend.service NRestarts))" \
                restarted_since "$n0" "$p0"
}
restart_check "systemctl kill -s KILL" do_kill

do_stop() {
        local n0 p0 t0; n0=$(prop agend.service NRestarts); p0=$(prop agend.service MainPID); t0=$(ms_now)
        cx kill -STOP "$p0"
        wait_for 30 restarted_since "$n0" "$p0"
        check "kill -STOP: the watchdog aborted agend and systemd restarted it after $(($(ms_now) - t0)) ms" \
                restarted_since "$n0" "$p0"
        check "kill -STOP: the journal says why (watchdog timeout)" \
                sh -c "'$H' exec journalctl -u agend --no-pager -o cat | grep -q 'Watchdog timeout'"
}
restart_check "kill -STOP (watchdog)" do_stop

# --- journal --------------------------------------------------------------------------------
# Reclaims and revokes are logged at info, with the structured fields.
cx "$VL" call Revoke "{\"id\": \"$lid\", \"reason\": \"test-systemd\"}" >/dev/null
sleep 0.5
j=$(cx journalctl -u agend --no-pager -o verbose)
for f in "AGEND_LEASE_ID=$lid" "AGEND_RESOURCE=gpu" "AGEND_TOKEN=$ltok" "AGEND_PEER_UID=0" \
        "MESSAGE_ID=8f9a4b6c3d5e4f1a0b2c4d5e6f708192" "MESSAGE_ID=7e8f3a5b2c4d4e0f9a1b3c4d5e6f7081"; do
        check "journalctl -u agend -o verbose has $f" grep -q "^    $f\$" <<<"$j"
done
cx journalctl --update-catalog
out=$(cx journalctl -u agend --no-pager -x MESSAGE_ID=7e8f3a5b2c4d4e0f9a1b3c4d5e6f7081 2>&1)
check "the journal catalog explains a revoke (journalctl -x)" grep -q "was revoked by an administrator" <<<"$out"
cx systemctl stop agend-test-holder 2>/dev/null

# --- restart time with many leases ----------------------------------------------------------
cx systemd-run --quiet --unit=agend-test-many --service-type=exec -p LimitNOFILE=4096 \
        "$VL" many "$N_LEASES" bulk- /run/agend-test/many
if wait_for 120 state_is /run/agend-test/many "granted $N_LEASES"; then
        t0=$(ms_now)
        cx systemctl restart agend
        t1=$(ms_now)
        wait_for 60 state_is /run/agend-test/many "reclaimed $N_LEASES 1"
        rc=$?
        t2=$(ms_now)
        out=$(cx cat /run/agend-test/many)
        note "$N_LEASES leases: systemctl restart agend took $((t1 - t0)) ms; all reclaimed $((t2 - t0)) ms after the restart began (holder: $out)"
        check "$N_LEASES leases: restart within 10 s ($((t1 - t0)) ms) and all reclaimed" \
                test $rc -eq 0 -a $((t1 - t0)) -lt 10000
else
        not_ok "$N_LEASES leases: could not acquire them ($(cx cat /run/agend-test/many 2>&1))"
fi
cx systemctl stop agend-test-many 2>/dev/null

# --- clean stop -----------------------------------------------------------------------------
cx systemctl stop agend 2>&1 | grep -v -e '^Warning: Stopping agend.service' -e '^  agend.socket$' | diag
check "systemctl stop agend: exits cleanly (Result=success)" \
        test "$(prop agend.service Result)" = success
check "the daemon started and stopped without warnings or errors in the journal" \
        sh -c "! '$H' exec journalctl -u agend --no-pager -p warning -o cat | grep -v -e 'Watchdog timeout' \
                -e 'Main process exited' -e 'Failed with result' -e 'Killing process' -e 'code=dumped' \
                -e 'code=killed' -e 'status=9/KILL' -e 'status=6/ABRT' | grep ."

echo "1..$n"
if ((failed)); then
        echo "# $failed of $n checks failed; container logs in $LOG_DIR"
        cx journalctl -u agend --no-pager -n 60 -o short-monotonic 2>&1 | diag
        exit 1
fi
exit 0
