#!/usr/bin/env bash
# systemd-harness.sh — boot a real systemd (PID 1 of a systemd-nspawn container) to test
# agend's units, also on a machine whose own PID 1 is not systemd. Needs root.
#
#   systemd-harness.sh setup          build the cached base rootfs (once per package list)
#   systemd-harness.sh create         fresh overlay over the base; prints its root directory,
#                                     which may be written to (meson install --destdir ROOT)
#   systemd-harness.sh start          boot the created machine; wait until it is running
#   systemd-harness.sh boot           create + start
#   systemd-harness.sh root           print the machine's root directory (host path)
#   systemd-harness.sh exec CMD...    run CMD inside (systemctl, journalctl, ...)
#   systemd-harness.sh run ARGS...    systemd-run --wait --pipe --collect ARGS... inside, so
#                                     CMD runs as a service (own cgroup and unit, User=, ...)
#   systemd-harness.sh teardown       power off, keep the journal, unmount, remove
#   systemd-harness.sh check          exit 0 if this machine can boot a container, 77 if not
#   systemd-harness.sh gc             tear down machines whose owner process is gone
#
# Environment:
#   AGEND_TEST_CACHE  cache and work directory (default /var/cache/agend-test); the base
#                     rootfs is kept there between runs, machines/NAME/ holds each boot
#   MACHINE           machine name; required for everything but setup, check and gc
#   HARNESS_OWNER     pid of the process that owns the machine (create records it; gc, run
#                     by every create, tears down machines whose owner is gone)
#   EXTRA_PACKAGES    more Debian packages for the base rootfs (comma-separated); a changed
#                     list builds (and caches) another base
#   LOG_DIR           where teardown leaves NAME.journal.txt and NAME.console.log
#                     (default $AGEND_TEST_CACHE/logs)
#   BOOT_TIMEOUT      seconds to wait for the boot (default 60)
#   MIRROR, SUITE     Debian mirror (default: from apt's sources) and suite (bookworm)
#
# Why each step is done the way it is: docs/systemd.md, "The test harness".
set -euo pipefail

CACHE=${AGEND_TEST_CACHE:-/var/cache/agend-test}
SUITE=${SUITE:-bookworm}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-60}
LOG_DIR=${LOG_DIR:-$CACHE/logs}
# What agend needs at run time, and python3 for the tests' varlink client. No procps: the
# units must work on a minimal system, which has no /bin/kill, ps or pgrep.
PACKAGES="systemd,systemd-sysv,dbus,libpam-systemd,libev4,libjson-c5,libsqlite3-0,libsystemd0,libcurl4,python3"
PACKAGES+=${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}
CPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf 'harness: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

host_has_systemd() { [[ -d /run/systemd/system ]]; }

machine_vars() {
        [[ -n ${MACHINE:-} ]] || die "set MACHINE"
        [[ $MACHINE =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,62}$ ]] || die "bad machine name '$MACHINE'"
        MDIR=$CACHE/machines/$MACHINE
        ROOT=$MDIR/root
        STATE=$MDIR/state
        CONSOLE=$MDIR/console.log
}

base_dir() {
        local key
        key=$(printf '%s|%s' "$SUITE" "$PACKAGES" | md5sum | cut -c1-12)
        echo "$CACHE/base-$SUITE-$key"
}

mirror() {
        if [[ -n ${MIRROR:-} ]]; then echo "$MIRROR"; return; fi
        local m=""
        [[ -r /etc/apt/sources.list.d/debian.sources ]] &&
                m=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
        [[ -z $m && -r /etc/apt/sources.list ]] &&
                m=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
                        /etc/apt/sources.list)
        echo "${m:-http://deb.debian.org/debian}"
}

# 0 if this machine can boot a container, else prints why and returns 77.
cmd_check() {
        local why=""
        if [[ $(id -u) -ne 0 ]]; then why="not root"
        elif ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
                why="systemd-nspawn or debootstrap missing (scripts/setup.sh installs them)"
        elif ! grep -qw overlay /proc/filesystems && ! modprobe overlay 2>/dev/null; then why="no overlayfs"
        elif [[ ! -d /sys/fs/cgroup ]]; then why="no cgroup file system"
        fi
        [[ -z $why ]] && return 0
        log "cannot boot a container here: $why"
        return 77
}

cmd_setup() {
        cmd_check || exit $?
        local base; base=$(base_dir)
        [[ -e $base/.complete ]] && return 0
        mkdir -p "$CACHE"
        # One debootstrap at a time per cache; a second caller waits and then finds the base.
        exec 9>"$CACHE/.setup.lock"
        flock 9
        if [[ -e $base/.complete ]]; then exec 9>&-; return 0; fi
        local tmp=$base.tmp.$$ t0=$SECONDS m; m=$(mirror)
        log "building the base rootfs ($SUITE from $m; + $PACKAGES); about a minute, once"
        # Under the lock nobody else debootstraps: any *.tmp.* is left by a killed run.
        rm -rf "$CACHE"/base-*.tmp.*
        if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$m" \
                        >"$CACHE/debootstrap.log" 2>&1; then
                tail -20 "$CACHE/debootstrap.log" >&2
                rm -rf "$tmp"
                die "debootstrap failed (log: $CACHE/debootstrap.log)"
        fi
        # A quiet, quick boot that never waits for the console: no gettys, timers or
        # first-boot wizard. The machine id stays non-empty (empty = first boot).
        local u
        for u in getty@tty1.service console-getty.service systemd-firstboot.service \
                        apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
                        e2scrub_reap.service fstrim.timer systemd-pstore.service; do
                ln -sf /dev/null "$tmp/etc/systemd/system/$u"
        done
        rm -f "$tmp"/var/cache/apt/archives/*.deb
        touch "$tmp/.complete"
        mv "$tmp" "$base"
        exec 9>&-
        log "base rootfs ready in $((SECONDS - t0)) s"
        prune_bases "$base"
}

# Removes the bases of other package lists (older revisions of this script) that no boot
# used for a day and that no overlay has mounted: ~200 MB each.
prune_bases() {
        local b
        for b in "$CACHE"/base-*; do
                [[ -d $b && $b != "$1" && $b != *.tmp.* ]] || continue
                [[ -e $b.used && -n $(find "$b.used" -mmin -1440) ]] && continue
                grep -q "lowerdir=${b}[,:]" /proc/mounts && continue
                log "removing the unused base rootfs $b"
                rm -rf "$b" "$b.used"
        done
}

cmd_create() {
        machine_vars
        cmd_setup
        cmd_gc
        local base; base=$(base_dir)
        touch "$base.used"      # for prune_bases; not inside the base, which overlays use
        [[ -e $STATE ]] && die "machine $MACHINE exists; tear it down first"
        mountpoint -q "$ROOT" 2>/dev/null && umount "$ROOT"
        rm -rf "$MDIR"
        mkdir -p "$ROOT" "$MDIR/upper" "$MDIR/work"
        # Every boot writes only to its own upper layer; the base is never modified, so
        # boots are independent and the cache stays valid.
        mount -t overlay overlay -o "lowerdir=$base,upperdir=$MDIR/upper,workdir=$MDIR/work" "$ROOT"
        echo "$MACHINE" >"$ROOT/etc/hostname"
        echo "OWNER=${HARNESS_OWNER:-}" >"$STATE"
        echo "$ROOT"
}

# Tears down the machines of this cache whose owner (the HARNESS_OWNER pid given at create)
# is gone: what a killed test run could not clean up itself.
cmd_gc() {
        local st OWNER
        for st in "$CACHE"/machines/*/state; do
                [[ -r $st ]] || continue
                OWNER=$(sed -n 's/^OWNER=//p' "$st")
                if [[ -z $OWNER ]] || kill -0 "$OWNER" 2>/dev/null; then continue; fi
                st=${st%/state}
                log "machine ${st##*/}: its owner $OWNER is gone; tearing it down"
                (MACHINE=${st##*/} cmd_teardown) || true
        done
}

cgroup_dirs() {
        local h
        for h in systemd unified; do
                [[ -d /sys/fs/cgroup/$h ]] && echo "/sys/fs/cgroup/$h/harness-$MACHINE"
        done
}

# The container's init: the child of systemd-nspawn whose comm is "systemd" (nspawn's first
# child is a short-lived intermediate, so "first child" would be wrong).
find_leader() {
        local ns c
        for ns in $(pgrep -P "$1" 2>/dev/null); do
                for c in $(pgrep -P "$ns" 2>/dev/null); do
                        [[ $(cat "/proc/$c/comm" 2>/dev/null) == systemd ]] && { echo "$c"; return 0; }
                done
        done
        return 1
}

load_state() {
        machine_vars
        [[ -r $STATE ]] || die "machine $MACHINE does not exist"
        # shellcheck disable=SC1090
        . "$STATE"
        [[ -n ${LEADER:-} ]] || die "machine $MACHINE is not started"
        kill -0 "$LEADER" 2>/dev/null || die "machine $MACHINE: its init ($LEADER) is gone; see $CONSOLE"
}

cexec() {
        # --root --wd without a value: with --wd=/ nsenter would resolve / on the host side.
        nsenter --target "$LEADER" --all --root --wd \
                env -i PATH="$CPATH" HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

cmd_start() {
        machine_vars
        [[ -r $STATE ]] || die "machine $MACHINE not created"
        # shellcheck disable=SC1090
        . "$STATE"
        [[ -z ${LEADER:-} ]] || die "machine $MACHINE already started"
        # --console=read-only: nspawn drains the console into a file (with passive, PID 1
        # blocks once ~4 KiB of console output pile up). --system-call-filter=bpf: lets the
        # container's systemd enforce IPAddressDeny=/DeviceAllow=. --private-network: only lo.
        local args=(-D "$ROOT" -M "$MACHINE" --boot --console=read-only --system-call-filter=bpf
                --private-network)
        local cg=""
        if ! host_has_systemd; then
                # No systemd (and no bus, no machined) on the host: do not register, do not
                # ask for a scope, and run from a cgroup of our own, because nspawn splits its
                # current cgroup into payload/ and supervisor/.
                args+=(--register=no --keep-unit)
                local d
                for d in $(cgroup_dirs); do cg+="mkdir -p $d && echo \$\$ >$d/cgroup.procs; "; done
        fi
        local t0; t0=$(date +%s%N)
        : >"$CONSOLE"
        rm -f "$MDIR/wrapper.pid"
        # A detached shell records its pid, enters its cgroup and runs nspawn; the container
        # gets a pure cgroup2 hierarchy (a hybrid one taints the boot and loses BPF).
        # shellcheck disable=SC2016 # $$, $@ and $? are the inner shell's
        SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 setsid bash -c \
                'echo $$ >"$0"; '"$cg"'systemd-nspawn "$@"; echo "[nspawn exited rc=$?]"' \
                "$MDIR/wrapper.pid" "${args[@]}" >>"$CONSOLE" 2>&1 </dev/null &
        local wrapper="" leader="" i
        for ((i = 0; i < BOOT_TIMEOUT * 50; i++)); do
                [[ -z $wrapper && -s $MDIR/wrapper.pid ]] && wrapper=$(cat "$MDIR/wrapper.pid")
                if [[ -n $wrapper ]]; then
                        leader=$(find_leader "$wrapper") && break
                        if ! kill -0 "$wrapper" 2>/dev/null; then
                                echo "WRAPPER=$wrapper" >>"$STATE"
                                cat "$CONSOLE" >&2
                                die "systemd-nspawn exited during start"
                        fi
                fi
                sleep 0.02
        done
        printf 'WRAPPER=%s\nLEADER=%s\n' "$wrapper" "$leader" >>"$STATE"
        [[ -n $leader ]] || die "no container init after ${BOOT_TIMEOUT}s; see $CONSOLE"
        LEADER=$leader
        local st=""
        for ((i = 0; i < BOOT_TIMEOUT * 20; i++)); do
                st=$(cexec systemctl is-system-running 2>/dev/null) || true
                [[ $st == running || $st == degraded ]] && break
                kill -0 "$leader" 2>/dev/null || die "container init died; see $CONSOLE"
                sleep 0.05
        done
        case $st in
        running) ;;
        degraded) log "machine $MACHINE is degraded:"; cexec systemctl --failed --no-pager >&2 || true ;;
        *) cexec systemctl list-jobs --no-pager >&2 || true; die "boot unfinished after ${BOOT_TIMEOUT}s ($st)" ;;
        esac
        # nspawn copies the host's device modes; a host /dev/null of 0620 would break every
        # service that is not root. Inside the container only.
        cexec chmod 0666 /dev/null /dev/zero /dev/full /dev/random /dev/urandom 2>/dev/null || true
        log "machine $MACHINE $st after $((($(date +%s%N) - t0) / 1000000)) ms (init pid $leader)"
}

cmd_teardown() {
        machine_vars
        local WRAPPER="" LEADER="" i
        # shellcheck disable=SC1090
        [[ -r $STATE ]] && . "$STATE"
        if [[ -n $LEADER ]] && kill -0 "$LEADER" 2>/dev/null; then
                cexec systemctl poweroff --no-block >/dev/null 2>&1 || kill -TERM "$LEADER" 2>/dev/null || true
                for ((i = 0; i < 300; i++)); do kill -0 "$WRAPPER" 2>/dev/null || break; sleep 0.05; done
                if kill -0 "$WRAPPER" 2>/dev/null; then
                        log "machine $MACHINE did not power off in 15 s; killing its init $LEADER"
                        kill -KILL "$LEADER" 2>/dev/null || true
                fi
        fi
        if [[ -n $WRAPPER ]]; then
                for ((i = 0; i < 200; i++)); do kill -0 "$WRAPPER" 2>/dev/null || break; sleep 0.05; done
                if kill -0 "$WRAPPER" 2>/dev/null; then kill -KILL "$WRAPPER" 2>/dev/null || true; fi
        fi
        mkdir -p "$LOG_DIR"
        if [[ -d $ROOT/var/log/journal ]]; then
                journalctl --directory="$ROOT/var/log/journal" --no-pager -o short-monotonic \
                        >"$LOG_DIR/$MACHINE.journal.txt" 2>/dev/null || true
        fi
        [[ -f $CONSOLE ]] && cp "$CONSOLE" "$LOG_DIR/$MACHINE.console.log"
        mountpoint -q "$ROOT" 2>/dev/null && { umount "$ROOT" || umount -l "$ROOT"; }
        rm -rf "$MDIR"
        local d
        for d in $(cgroup_dirs); do
                if [[ -d $d ]]; then find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
        done
        # nspawn leaves this when the host's /run is not a tmpfs ("we can't allow that").
        rm -rf "/run/systemd/nspawn/propagate/$MACHINE"
        # Keep the logs of the last 20 machines.
        find "$LOG_DIR" -maxdepth 1 -type f -printf '%T@ %p\n' | sort -rn | tail -n +41 | cut -d' ' -f2- |
                xargs -r rm -f
        log "machine $MACHINE torn down; journal in $LOG_DIR/$MACHINE.journal.txt"
}

sub=${1:-}
shift || true
case $sub in
check) cmd_check ;;
gc) cmd_gc ;;
setup) cmd_setup ;;
create) cmd_create ;;
start) cmd_start ;;
boot) cmd_create >/dev/null && cmd_start ;;
root) machine_vars; echo "$ROOT" ;;
exec) load_state; cexec "$@" ;;
run) load_state; cexec systemd-run --quiet --wait --pipe --collect --service-type=exec "$@" ;;
teardown) cmd_teardown ;;
*) sed -n '2,28p' "$0" >&2; exit 2 ;;
esac
