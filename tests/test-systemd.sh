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
export MACHINE=agend-t$$-$RANDOM HARNESS_OWNER=$$
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
reloads() { cx journalctl -u agend --no-pager -o cat | grep -c '^configuration reloaded'; }
reloaded_since() { (($(reloads) > $1)); }
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

# --- a Debian package: -Dprefix=/usr, staged install, maintainer scripts ------------------
# Built first, installed into a second container at the end ("the package"), the way a
# packager builds it: dh_auto_configure's meson options with dpkg-buildflags, `meson
# install` into a staging directory (DESTDIR), then a .deb of that tree whose postinst is
# what debhelper writes for it. The build directory is kept inside the build directory, so
# later runs only rebuild what changed.
PKG_BUILD=$BUILD/systemd-test-pkg
PKG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/agend-test-pkg.XXXXXX")
STAGE=$PKG_DIR/stage
DEB=$PKG_DIR/agend.deb

pkg_build() {
        if [[ ! -f $PKG_BUILD/build.ninja ]]; then
                rm -rf "$PKG_BUILD"
                local ma; ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
                CFLAGS="$(dpkg-buildflags --get CFLAGS 2>/dev/null) $(dpkg-buildflags --get CPPFLAGS 2>/dev/null)" \
                LDFLAGS=$(dpkg-buildflags --get LDFLAGS 2>/dev/null) LC_ALL=C.UTF-8 \
                        meson setup "$PKG_BUILD" "$SRC" --wrap-mode=nodownload --buildtype=plain --prefix=/usr \
                        --sysconfdir=/etc --localstatedir=/var --libdir="lib/$ma" -Dtests=false -Dbench=false ||
                        return 1
        fi
        ninja -C "$PKG_BUILD" && DESTDIR=$STAGE meson install -C "$PKG_BUILD" --no-rebuild
}
# The maintainer script: debhelper 13.11's snippets for this package, verbatim and in its
# order (units last). dh_installsysusers and dh_installtmpfiles find
# usr/lib/sysusers.d/agend.conf and usr/lib/tmpfiles.d/agend.conf; `dh_installsystemd
# agend.socket` enables and starts the socket (the daemon starts on the first connection). The journal catalog needs no line:
# systemd's dpkg trigger on /usr/lib/systemd/catalog updates it. docs/systemd.md, "Packaging".
pkg_postinst() {
        cat <<'EOF'
#!/bin/sh
set -e
# Automatically added by dh_installsysusers/13.11.4
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
   systemd-sysusers ${DPKG_ROOT:+--root="$DPKG_ROOT"} agend.conf
fi
# End automatically added section
# Automatically added by dh_installtmpfiles/13.11.4
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if [ -x "$(command -v systemd-tmpfiles)" ]; then
		systemd-tmpfiles ${DPKG_ROOT:+--root="$DPKG_ROOT"} --create agend.conf >/dev/null || true
	fi
fi
# End automatically added section
# Automatically added by dh_installsystemd/13.11.4
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	# The following line should be removed in trixie or trixie+1
	deb-systemd-helper unmask 'agend.socket' >/dev/null || true

	# was-enabled defaults to true, so new installations run enable.
	if deb-systemd-helper --quiet was-enabled 'agend.socket'; then
		# Enables the unit on first installation, creates new
		# symlinks on upgrades if the unit file has changed.
		deb-systemd-helper enable 'agend.socket' >/dev/null || true
	else
		# Update the statefile to add new symlinks (if any), which need to be
		# cleaned up on purge. Also remove old symlinks.
		deb-systemd-helper update-state 'agend.socket' >/dev/null || true
	fi
fi
# End automatically added section
# Automatically added by dh_installsystemd/13.11.4
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			_dh_action=restart
		else
			_dh_action=start
		fi
		deb-systemd-invoke $_dh_action 'agend.socket' >/dev/null || true
	fi
fi
# End automatically added section
EOF
}
pkg_deb() {
        local ver
        ver=$(meson introspect --projectinfo "$PKG_BUILD" | python3 -c 'import json, sys; print(json.load(sys.stdin)["version"])')
        mkdir -p "$STAGE/DEBIAN"
        cat >"$STAGE/DEBIAN/control" <<EOF
Package: agend
Version: $ver
Architecture: $(dpkg --print-architecture)
Maintainer: agend test suite <root@localhost>
Depends: libev4, libjson-c5, libsqlite3-0, libsystemd0, libcurl4, systemd | systemd-sysusers
Section: admin
Priority: optional
Description: machine-local resource-lease service (test package)
 Built by tests/test-systemd.sh from a -Dprefix=/usr staged install.
EOF
        pkg_postinst >"$STAGE/DEBIAN/postinst"
        chmod 0755 "$STAGE/DEBIAN/postinst"
        dpkg-deb --root-owner-group -Zgzip --build "$STAGE" "$DEB"
}
HAVE_DEB=0
t0=$(ms_now)
if pkg_build >"$LOG_DIR/pkg-build.log" 2>&1; then
        note "-Dprefix=/usr build and staged install in $(($(ms_now) - t0)) ms ($PKG_BUILD)"
        check "the staged -Dprefix=/usr install holds only usr/ (no lib/ to replace the /lib symlink; nothing in /etc)" \
                test "$(ls -A "$STAGE")" = usr
        check "... its units are in usr/lib/systemd/system" \
                test -f "$STAGE/usr/lib/systemd/system/agend.service" -a -f "$STAGE/usr/lib/systemd/system/agend.socket"
        check "... ExecStart= names /usr/sbin/agend, which it holds" \
                sh -c "grep -qx 'ExecStart=/usr/sbin/agend' '$STAGE/usr/lib/systemd/system/agend.service' && test -x '$STAGE/usr/sbin/agend'"
        if pkg_deb >>"$LOG_DIR/pkg-build.log" 2>&1; then HAVE_DEB=1; else
                tail -20 "$LOG_DIR/pkg-build.log" | diag
                not_ok "dpkg-deb --build of the staged tree"
        fi
else
        tail -30 "$LOG_DIR/pkg-build.log" | diag
        not_ok "-Dprefix=/usr build and DESTDIR install (log: $LOG_DIR/pkg-build.log)"
fi

cleanup() {
        trap '' INT TERM        # a second signal must not cut the teardown short
        rm -rf "$PKG_DIR"
        if [[ ${KEEP_MACHINE:-} == 1 ]]; then
                echo "# kept: MACHINE=$MACHINE $H teardown" >&2
        else
                "$H" teardown >"$LOG_DIR/teardown.log" 2>&1
        fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ROOT=$("$H" create) || bail "cannot create the container"
t0=$(ms_now)
"$H" start 2>&1 | diag
cx true 2>/dev/null || bail "the container did not boot (logs in $LOG_DIR)"
note "container $MACHINE booted in $(($(ms_now) - t0)) ms"

# Install into the running system, as scripts/start.sh does on a machine whose PID 1 is
# systemd: meson install, whose install script (systemd/meson-postinstall.sh) creates the
# user and /etc/agend. --destdir skips that script, so it runs inside, as meson would.
meson install -C "$BUILD" --no-rebuild --quiet --destdir "$ROOT" >"$LOG_DIR/install.log" 2>&1 ||
        { diag <"$LOG_DIR/install.log"; bail "meson install --destdir failed"; }
install -D -m 0755 "$SRC/tests/systemd-varlink.py" "$ROOT$VL"
install -D -m 0755 "$SRC/systemd/meson-postinstall.sh" "$ROOT${VL%/*}/meson-postinstall.sh"
# Its arguments as meson passes them: the installed sysusers.d and tmpfiles.d snippets.
read -r SYSUSERS_CONF TMPFILES_CONF < <(python3 - "$BUILD/meson-info/intro-installed.json" <<'PY'
import json, sys
dst = json.load(open(sys.argv[1])).values()
print(*[next(d for d in dst if d.endswith(k + "/agend.conf")) for k in ("sysusers.d", "tmpfiles.d")])
PY
)
# Test-only settings, as a drop-in an administrator would write: a short watchdog so the
# watchdog check takes seconds, room in the start limit for this test's dozen restarts
# (a bound still: a daemon that cannot start must not loop here either; with the limit
# off, a failing agend once restarted 1458 times here), and no core files.
mkdir -p "$ROOT/etc/systemd/system/agend.service.d"
cat >"$ROOT/etc/systemd/system/agend.service.d/50-test.conf" <<'EOF'
[Unit]
StartLimitBurst=30
[Service]
WatchdogSec=3s
LimitCORE=0
EOF
cx ldconfig
out=$(cx "${VL%/*}/meson-postinstall.sh" "$SYSUSERS_CONF" "$TMPFILES_CONF" 2>&1); rc=$?
diag <<<"$out"
check "meson's install script (systemd-sysusers, systemd-tmpfiles, catalog, daemon-reload) succeeds" test $rc -eq 0
check "... it created the system user agend" cx id -u agend
check "... and /etc/agend with the default agend.conf" cx test -f /etc/agend/agend.conf -a -d /etc/agend/resources.d

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

# --threshold is on the 0..100 scale of the exposure level times 10: 20 = 2.0.
out=$(cx systemd-analyze security agend.service --no-pager --threshold=20 2>&1); rc=$?
score=$(sed -n 's/.*Overall exposure level for agend.service: \([0-9.]*\).*/\1/p' <<<"$out")
grep '✗' <<<"$out" | diag
check "systemd-analyze security agend.service: ${score:-?} <= 2.0 (--threshold=20 passes)" \
        sh -c "test $rc -eq 0 && awk -v s='${score:-99}' 'BEGIN { exit !(s <= 2.0) }'"

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
        test "$(cx stat -c %U "/proc/$pid")" = agend
check "database in the StateDirectory /var/lib/agend (agend-owned)" \
        test "$(cx stat -c %U "/var/lib/agend/agend.db" 2>/dev/null)" = agend
check "RuntimeDirectory /run/agend owned by agend" test "$(cx stat -c %U /run/agend)" = agend

pid=$(prop agend.service MainPID); r0=$(reloads)
check "systemctl reload agend without /bin/kill (the container has no procps)" \
        sh -c "! '$H' exec test -e /usr/bin/kill && '$H' exec systemctl reload agend"
check "... agend re-read its configuration (SIGHUP): the journal says so" wait_for 10 reloaded_since "$r0"
check "... same process, still running" \
        test "$(prop agend.service MainPID)" = "$pid" -a "$(prop agend.service SubState)" = running

out=$(cx "$VL" owner whoami-root)
diag <<<"root: $out"
check "a root client is identified as uid 0" grep -q '^{"uid": 0,' <<<"$out"
# A uid other than 0 and other than 65534: under PrivateUsers=yes every foreign uid would
# show up as 65534 ("nobody"), so a client running as nobody could not tell.
out=$(cx systemd-run --quiet --wait --pipe --collect --service-type=exec --unit=agend-test-other \
        -p DynamicUser=yes "$VL" owner whoami-other 2>&1)
diag <<<"other uid: $out"
rec=$(sed -n 1p <<<"$out"); self=$(sed -n 2p <<<"$out")
ruid=$(sed -n 's/.*"uid": \([0-9]*\).*/\1/p' <<<"$rec"); suid=$(sed -n 's/.*"uid": \([0-9]*\).*/\1/p' <<<"$self")
rpid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' <<<"$rec"); spid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' <<<"$self")
check "a client running as another uid ($suid) is identified as that uid and pid, by SO_PEERCRED" \
        test -n "$suid" -a "$ruid" = "$suid" -a "$suid" != 0 -a "$suid" != 65534 -a "$rpid" = "$spid"
check "... its command name is read from /proc/PID/comm despite the sandbox" grep -q '"comm": "varlink"' <<<"$rec"
check "... and its systemd unit by sd_pid_get_unit" grep -q '"unit": "agend-test-other.service"' <<<"$rec"
check "Status reports the boot id (/proc/sys/kernel/random/boot_id readable in the sandbox)" \
        sh -c "'$H' exec '$VL' call Status | grep -Eq '\"boot_id\": \"[0-9a-f-]{36}\"'"

# --- a held lease across restarts -----------------------------------------------------------
# The holder is not root (a dynamic uid): it must reclaim by its own right.
cx mkdir -p /run/agend-test
HSTATE=/run/agend-test-holder/state
cx systemd-run --quiet --unit=agend-test-holder --service-type=exec -p DynamicUser=yes \
        -p RuntimeDirectory=agend-test-holder "$VL" hold gpu "$HSTATE"
wait_for 10 state_is "$HSTATE" granted || not_ok "holder got no lease"
read -r _ lid ltok hpid _ <<<"$(cx cat "$HSTATE")"
huid=$(cx stat -c %u "/proc/$hpid")
note "holder pid $hpid (uid $huid) holds lease $lid (token $ltok)"
if ((HAVE_AGENCTL)); then
        out=$(cx systemd-run --quiet --wait --pipe --collect --service-type=exec -p DynamicUser=yes \
                agenctl --json list 2>&1)
        check "agenctl --json list, run by yet another uid, shows the holder's lease" \
                grep -q "$lid" <<<"$out"
        # The way users hold leases: agenctl run (libagenclient), through all the restarts below.
        cx systemd-run --quiet --unit=agend-test-run --service-type=exec -p DynamicUser=yes \
                agenctl run cuda -- sleep 600
        run_lease() { cx "$VL" call List '{"resource": "cuda"}' | grep -o '"id": "[0-9a-f]*"' | head -1; }
        wait_for 10 sh -c "'$H' exec '$VL' call List '{\"resource\": \"cuda\"}' | grep -q '\"id\"'"
        run_id=$(run_lease); run_id=${run_id#*: \"}; run_id=${run_id%\"}
        run_pid=$(prop agend-test-run MainPID)
        run_before=$(cx "$VL" lease "$run_id")
        note "agenctl run (pid $run_pid) holds lease $run_id: $run_before"
fi

# restart_check NAME COMMAND...: COMMAND brings agend down (systemd restarts it);
# meanwhile a prober keeps trying to take "gpu". The holder must keep its lease: either its
# connection survived in systemd's fd store (FDSTORE=1), or it reconnected and reclaimed
# the lease with the same id and token. The prober must never get it.
kept_or_reclaimed() {   # kept_or_reclaimed RECLAIMS_BEFORE
        local st; st=$(cx cat "$HSTATE" 2>/dev/null)
        if [[ $st == "reclaimed $lid $ltok $hpid $(($1 + 1))"* ]]; then how=reclaimed; return 0; fi
        # Connection kept: agend is up, the lease is "held" (a restored lease not yet
        # reclaimed is "reclaimable") by the holder, which never saw a disconnect.
        [[ $st != disconnected* && $st != lost* ]] && is_active || return 1
        [[ $(cx "$VL" lease "$lid" 2>/dev/null) == "held $hpid $huid $ltok" ]] || return 1
        st=$(cx cat "$HSTATE" 2>/dev/null)
        [[ $st != disconnected* && $st != lost* ]] || return 1
        how=kept
}
restart_check() {
        local name=$1 reclaims how=""; shift
        reclaims=$(cx cat "$HSTATE" | awk '{ print $5 }')
        cx rm -f /run/agend-test/probe.stop
        "$H" exec "$VL" probe gpu /run/agend-test/probe.stop >"$LOG_DIR/probe.log" 2>&1 &
        local prober=$!
        sleep 0.3
        local t0; t0=$(ms_now)
        "$@"
        wait_for 60 kept_or_reclaimed "$reclaims"
        local rc=$? t1; t1=$(ms_now)
        note "$name: holder's lease ${how:-LOST} after $((t1 - t0)) ms ($(cx cat "$HSTATE"))"
        sleep 0.3
        cx touch /run/agend-test/probe.stop
        wait "$prober"
        diag <"$LOG_DIR/probe.log"
        check "$name: the holder kept its lease or reclaimed it (same id and token)" test $rc -eq 0
        check "$name: no other client got the lease meanwhile" \
                grep -q '"granted": 0,' "$LOG_DIR/probe.log"
        rm -f "$LOG_DIR/probe.log"
        check "$name: List shows the lease held by the holder's pid and uid" \
                test "$(cx "$VL" lease "$lid")" = "held $hpid $huid $ltok"
        if [[ $name == "systemctl restart agend" ]]; then
                # A clean restart hands quiet connections to systemd's fd store (FDSTORE=1)
                # and takes them back: the holder must not even see a disconnect.
                check "$name: the holder's connection survived (fd store)" test "$how" = kept
        fi
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
        cx systemctl kill -s STOP --kill-who=main agend         # no /bin/kill in the container
        wait_for 30 restarted_since "$n0" "$p0"
        check "kill -STOP: the watchdog aborted agend and systemd restarted it after $(($(ms_now) - t0)) ms" \
                restarted_since "$n0" "$p0"
        check "kill -STOP: the journal says why (watchdog timeout)" \
                sh -c "'$H' exec journalctl -u agend --no-pager -o cat | grep -q 'Watchdog timeout'"
}
restart_check "kill -STOP (watchdog)" do_stop

if ((HAVE_AGENCTL)); then
        wait_for 15 sh -c "test \"\$('$H' exec '$VL' lease '$run_id')\" = '$run_before'"
        check "agenctl run kept its lease through restart, SIGKILL and watchdog ($(cx "$VL" lease "$run_id"))" \
                test "$(cx "$VL" lease "$run_id")" = "$run_before"
        check "... and its command still runs" \
                test "$(prop agend-test-run SubState)" = running -a "$(prop agend-test-run MainPID)" = "$run_pid"
        cx systemctl stop agend-test-run 2>/dev/null
fi

# --- journal --------------------------------------------------------------------------------
# Reclaims and revokes are logged at info, with the structured fields.
cx "$VL" call Revoke "{\"id\": \"$lid\", \"reason\": \"test-systemd\"}" >/dev/null
sleep 0.5
j=$(cx journalctl -u agend --no-pager -o verbose)
for f in "AGEND_LEASE_ID=$lid" "AGEND_RESOURCE=gpu" "AGEND_TOKEN=$ltok" "AGEND_PEER_UID=$huid" \
        "MESSAGE_ID=cb93d7f22e2d4b4bb45571c298634761" "MESSAGE_ID=f3a2122229dc4db18648f38e50f14c62" \
        "REASON=test-systemd" "AGEND_REVOKED_BY_UID=0"; do
        check "journalctl -u agend -o verbose has $f" grep -q "^    $f\$" <<<"$j"
done
out=$(cx journalctl -u agend --no-pager -x MESSAGE_ID=f3a2122229dc4db18648f38e50f14c62 2>&1)
check "the journal catalog explains a revoke (journalctl -x)" grep -q "was revoked by the process" <<<"$out"
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

# --- the package on a fresh, minimal system ------------------------------------------------
# A second container, fresh from the base (no procps, nothing of the first run). The .deb
# goes into the image before it boots, as an image builder installs packages: dpkg in a
# chroot with /proc mounted, where the postinst creates the user and /etc/agend and enables
# agend.socket (nothing runs yet), and the triggers run ldconfig and update the journal
# catalog. Those are checked before the boot, because the boot would also run
# systemd-sysusers, systemd-tmpfiles and the catalog update for everything installed.
if ((HAVE_DEB)); then
        if [[ ${KEEP_MACHINE:-} == 1 ]]; then note "kept: MACHINE=$MACHINE $H teardown"; else
                "$H" teardown >"$LOG_DIR/teardown.log" 2>&1
        fi
        export MACHINE=agend-p$$-$RANDOM
        ROOT=$("$H" create) || bail "cannot create the package's container"
        cp "$DEB" "$ROOT/var/cache/agend-test.deb"
        mount -t proc proc "$ROOT/proc"
        out=$(chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
                dpkg -i /var/cache/agend-test.deb 2>&1); rc=$?
        umount "$ROOT/proc"
        rm -f "$ROOT/var/cache/agend-test.deb"
        diag <<<"$out"
        check "package: dpkg -i into a fresh image succeeds" test $rc -eq 0
        check "package: its postinst created the system user agend (systemd-sysusers)" \
                grep -q '^agend:' "$ROOT/etc/passwd"
        check "package: its postinst created /etc/agend/agend.conf from /usr/share/agend (systemd-tmpfiles)" \
                cmp -s "$ROOT/etc/agend/agend.conf" "$ROOT/usr/share/agend/agend.conf"
        check "package: its postinst enabled agend.socket (deb-systemd-helper)" \
                test -L "$ROOT/etc/systemd/system/sockets.target.wants/agend.socket"
        check "package: dpkg's trigger updated the journal catalog" \
                sh -c "journalctl --root='$ROOT' --list-catalog | grep -q '^f3a2122229dc4db18648f38e50f14c62 '"
        t0=$(ms_now)
        "$H" start 2>&1 | diag
        cx true 2>/dev/null || bail "the package's container did not boot (logs in $LOG_DIR)"
        note "container $MACHINE booted in $(($(ms_now) - t0)) ms"

        check "package: no procps on this system (no /bin/kill)" \
                sh -c "! '$H' exec dpkg -s procps >/dev/null 2>&1 && ! '$H' exec test -e /usr/bin/kill"
        check "package: dpkg has its units in /usr/lib/systemd/system" \
                sh -c "'$H' exec dpkg -S /usr/lib/systemd/system/agend.service | grep -q '^agend:'"
        # (systemd 252 searches /lib/systemd/system first, which is the same directory here.)
        check "package: systemd loads agend.service from there" \
                test "$(cx realpath "$(prop agend.service FragmentPath)")" = /usr/lib/systemd/system/agend.service
        out=$(cx systemd-analyze verify /usr/lib/systemd/system/agend.socket /usr/lib/systemd/system/agend.service 2>&1); rc=$?
        [[ -n $out ]] && diag <<<"$out"
        check "package: systemd-analyze verify: no errors, no warnings" test $rc -eq 0 -a -z "$out"
        check "package: agend.socket listens after the boot, agend.service not started" \
                test "$(prop agend.socket UnitFileState)" = enabled -a "$(prop agend.socket ActiveState)" = active \
                -a "$(prop agend.service ActiveState)" = inactive
        out=$(cx agenctl status 2>&1); rc=$?
        diag <<<"$out"
        check "package: agenctl status starts agend through the socket (socket activation)" \
                test $rc -eq 0 -a "$(prop agend.service ActiveState)" = active
        cx systemctl stop agend 2>&1 | grep -v -e '^Warning: Stopping agend.service' -e '^  agend.socket$' | diag
        st=$(prop agend.service ActiveState)
        cx systemctl start agend; rc=$?
        check "package: systemctl stop agend ($st), then systemctl start agend: active (running)" \
                test "$st" = inactive -a $rc -eq 0
        is_active || not_ok "package: agend.service is $(prop agend.service ActiveState)/$(prop agend.service SubState)"
        # A second unit of pkg-slots exists only once agend has re-read the configuration.
        pid=$(prop agend.service MainPID); r0=$(reloads)
        printf '[Resource]\nName=pkg-slots\nCapacity=2\n' >"$ROOT/etc/agend/resources.d/pkg-slots.conf"
        check "package: systemctl reload agend (ExecReload= without /bin/kill)" cx systemctl reload agend
        wait_for 10 reloaded_since "$r0"; rc=$?
        check "... agend re-read its configuration, same process" test $rc -eq 0 -a "$(prop agend.service MainPID)" = "$pid"
        out=$(cx systemd-run --quiet --wait --pipe --collect --service-type=exec -p DynamicUser=yes \
                agenctl run pkg-slots --units 2 --nowait -- agenctl --json list pkg-slots 2>&1); rc=$?
        diag <<<"$out"
        grep -q '"resource":"pkg-slots","units":2,' <<<"$out" || rc=1
        check "package: agenctl run, as another uid, holds 2 units of pkg-slots (declared by the reload)" test $rc -eq 0
        cx systemctl stop agend 2>&1 | grep -v -e '^Warning: Stopping agend.service' -e '^  agend.socket$' | diag
        out=$(cx journalctl -u agend --no-pager -p warning -o cat 2>&1)
        diag <<<"$out"
        check "package: systemctl stop agend: exits cleanly, no warnings or errors in its journal" \
                test "$(prop agend.service Result)" = success -a -z "$out"

        # A daemon that cannot start (here a bad configuration: it exits 1 at once) ends
        # failed under the unit's own start limit (StartLimitBurst=5 in 60 s, RestartSec=1s),
        # instead of restarting for ever; fixed, reset-failed starts it again.
        check "package: the unit's own start limit: StartLimitBurst=5 in 60 s, RestartSec=1s" \
                test "$(prop agend.service StartLimitBurst)" = 5 -a "$(prop agend.service StartLimitIntervalUSec)" = 1min \
                -a "$(prop agend.service RestartUSec)" = 1s
        printf '[Resource]\nName=broken\nNoSuchKey=1\n' >"$ROOT/etc/agend/resources.d/zz-broken.conf"
        cx systemctl reset-failed agend 2>/dev/null
        t0=$(ms_now)
        cx systemctl start agend >/dev/null 2>&1 && not_ok "package: agend started with a bad configuration"
        # (systemd 252 keeps the last failure's Result=, exit-code; the journal names the limit.)
        limit_hit() {
                [[ $(prop agend.service ActiveState) == failed ]] &&
                        cx journalctl -u agend --no-pager -o cat | grep -q 'Start request repeated too quickly'
        }
        wait_for 60 limit_hit; rc=$?
        nr=$(prop agend.service NRestarts)
        note "failing agend: $(prop agend.service ActiveState)/$(prop agend.service Result) after $(($(ms_now) - t0)) ms, NRestarts=$nr"
        check "package: an agend that cannot start ends failed (start limit hit), not looping" test $rc -eq 0
        check "... after at most StartLimitBurst=5 starts (NRestarts=$nr)" test "${nr:-99}" -le 5
        sleep 3         # three RestartSec= intervals: a loop would have started it again
        check "... and systemd does not start it again ($(prop agend.service ActiveState), NRestarts=$(prop agend.service NRestarts))" \
                test "$(prop agend.service ActiveState)" = failed -a "$(prop agend.service NRestarts)" = "$nr"
        check "... the journal says why (the configuration error)" \
                sh -c "'$H' exec journalctl -u agend --no-pager -o cat | grep -q 'unknown key NoSuchKey='"
        rm -f "$ROOT/etc/agend/resources.d/zz-broken.conf"
        cx systemctl reset-failed agend
        cx systemctl start agend; rc=$?
        check "package: fixed and reset-failed, systemctl start agend: active (running)" test $rc -eq 0
        is_active || not_ok "package: agend.service is $(prop agend.service ActiveState) after reset-failed"
        cx systemctl stop agend 2>&1 | grep -v -e '^Warning: Stopping agend.service' -e '^  agend.socket$' | diag
fi

echo "1..$n"
if ((failed)); then
        echo "# $failed of $n checks failed; container logs in $LOG_DIR; the last of $MACHINE:"
        cx journalctl -u agend --no-pager -n 60 -o short-monotonic 2>&1 | diag
        exit 1
fi
exit 0
