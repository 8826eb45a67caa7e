#!/usr/bin/env bash
# Runs agend, Redis and etcd side by side on this machine and benchmarks them in one run
# (see docs/performance.md). Only ratios measured in one run mean anything on a VM whose
# fsync speed drifts, so every point is measured for all peers back to back.
#
#   bench/run.sh                 the full comparison (about 10 minutes)
#   bench/run.sh --quick         shorter points, smaller scale (about 3 minutes)
#   bench/run.sh --smoke         a few seconds, agend only, no install (what the tests run)
#
# Options: --out DIR (results; default a new temp dir), --build DIR (default build-bench),
# --agend BINARY (instead of the one built), --duration S (measured seconds per point, 5),
# --rounds N (1), --no-scale, --no-perf, --no-install, --no-cluster (skip the cluster-scope block:
# agend's Scope=cluster cycles and the etcd lock recipe on a 3-member cluster, and local cycles
# with and without a [Cluster] section), --cluster-only (only that block), --ceiling (also
# builds agend with test hooks in BUILD-hooks and runs 64 × 1 three times over with agend on
# a store that keeps nothing beside agend and Redis: what agend costs without its store).
#
# Installs redis-server, etcd-server and gnuplot from Debian if missing. Every process it
# starts listens on a Unix socket in a temp dir or on 127.0.0.1, and is stopped by its pid
# on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0 quick=0 scale=1 perf=1 install=1 out= build=build-bench duration=5 warmup=1 rounds=1 agend=
cluster=1 cluster_only=0 ceiling=0
while (($#)); do
        case $1 in
        --smoke) smoke=1 ;;
        --quick) quick=1 duration=2 ;;
        --no-scale) scale=0 ;;
        --no-perf) perf=0 ;;
        --no-install) install=0 ;;
        --no-cluster) cluster=0 ;;
        --cluster-only) cluster_only=1 ;;
        --ceiling) ceiling=1 ;;
        --out) out=$2; shift ;;
        --build) build=$2; shift ;;
        --agend) agend=$2; shift ;;
        --duration) duration=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
        esac
        shift
done

log() { printf '== %s\n' "$*" >&2; }

# ---- build ----
if [[ ! -f $build/build.ninja ]]; then
        meson setup "$build" -Dbuildtype=debugoptimized >/dev/null
fi
ninja -C "$build" >/dev/null
bench=$build/bench/agen-bench
[[ -n $agend ]] || agend=$(find "$build/daemon" -maxdepth 1 -name agend -type f -perm -u+x 2>/dev/null | head -1)
[[ -x $bench ]] || { echo "run.sh: $bench was not built" >&2; exit 1; }
[[ -n $agend ]] || { echo "run.sh: agend was not built (daemon/ not ready?)" >&2; exit 1; }
agend_hooks=
if ((ceiling)); then
        # The same code with AGEND_TEST_STORE, which a build without test hooks refuses.
        [[ -f $build-hooks/build.ninja ]] ||
                meson setup "$build-hooks" -Dbuildtype=debugoptimized -Dtest_hooks=enabled >/dev/null
        ninja -C "$build-hooks" daemon/agend >/dev/null
        agend_hooks=$build-hooks/daemon/agend
fi

if ((smoke)); then
        exec "$bench" smoke --agend "$agend"
fi

# ---- peers ----
if ((install)); then
        need=()
        command -v redis-server >/dev/null || need+=(redis-server)
        command -v etcd >/dev/null || need+=(etcd-server)
        command -v gnuplot >/dev/null || need+=(gnuplot-nox)
        if ((${#need[@]})); then
                sudo=; [[ $(id -u) -eq 0 ]] || sudo=sudo
                log "installing ${need[*]}"
                export DEBIAN_FRONTEND=noninteractive
                $sudo apt-get update -qq
                # Debian starts redis-server as a service on install where it can; that one
                # is not ours and is left alone: ours listens on its own Unix socket only.
                $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        fi
fi
have_redis=0; command -v redis-server >/dev/null && have_redis=1
have_etcd=0; command -v etcd >/dev/null && have_etcd=1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/agend-bench.XXXXXX")
[[ -n $out ]] || out=$(mktemp -d "${TMPDIR:-/tmp}/agend-bench-results.XXXXXX")
mkdir -p "$out"
results=$out/results.jsonl
: >"$results"

pids=()
cleanup() {
        local p
        for p in "${pids[@]}"; do
                [[ -n $p ]] && kill -TERM "$p" 2>/dev/null || true
        done
        for p in "${pids[@]}"; do
                [[ -n $p ]] || continue
                for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$p" 2>/dev/null || true
                wait "$p" 2>/dev/null || true
        done
        [[ -n ${etcd_cluster_dir:-} ]] && tests/etcd-cluster.sh stop "$etcd_cluster_dir" || true
        rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A sock pid addr
start_agend() {         # start_agend NAME ARGS... (binary: $agend_bin or $agend; env: $agend_env)
        local name=$1; shift
        mkdir -p "$tmp/$name"
        sock[$name]=$tmp/$name/io.agend.Lease
        (ulimit -n 65536 2>/dev/null || true
         exec env ${agend_env:-} "${agend_bin:-$agend}" --socket "${sock[$name]}" --state-dir "$tmp/$name" "$@") \
                >"$tmp/$name/log" 2>&1 &
        pid[$name]=$!; pids+=("$!")
        "$bench" ready --socket "${sock[$name]}" --server-pid "${pid[$name]}" --duration 60 ||
                { cat "$tmp/$name/log" >&2; exit 1; }
}
start_redis() {         # start_redis NAME ARGS...
        local name=$1; shift
        mkdir -p "$tmp/$name"
        sock[$name]=$tmp/$name/redis.sock
        redis-server --port 0 --unixsocket "${sock[$name]}" --unixsocketperm 700 --dir "$tmp/$name" \
                --save '' --daemonize no --logfile "$tmp/$name/log" "$@" &
        pid[$name]=$!; pids+=("$!")
        for _ in $(seq 100); do [[ -S ${sock[$name]} ]] && break; sleep 0.05; done
        [[ -S ${sock[$name]} ]] || { cat "$tmp/$name/log" >&2; exit 1; }
}
start_etcd() {          # start_etcd NAME
        local name=$1 cport pport
        mkdir -p "$tmp/$name"
        cport=$("$bench" free-port); pport=$("$bench" free-port)
        addr[$name]=127.0.0.1:$cport
        etcd --name bench --data-dir "$tmp/$name/data" \
                --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
                --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
                --initial-cluster "bench=http://127.0.0.1:$pport" --logger zap --log-outputs stderr \
                --log-level error >"$tmp/$name/log" 2>&1 &
        pid[$name]=$!; pids+=("$!")
        for _ in $(seq 200); do
                curl -s -m 1 -X POST "http://127.0.0.1:$cport/v3/maintenance/status" -d '{}' 2>/dev/null |
                        grep -q leader && return 0
                sleep 0.1
        done
        cat "$tmp/$name/log" >&2; exit 1
}

# ---- cluster scope (issue 16): agend's Scope=cluster cycles against the plain etcd lock
# recipe, on one 3-member cluster, point by point back to back ----
# bench/etcd-lock.c: the recipe (lease + txn on create revision + wait for the key ahead),
# N contenders on one lock; with --agend the same N contenders cycle on a Scope=cluster
# resource of an agend whose [Cluster] points at the same etcd. Then the local cycle of an
# agend with a [Cluster] section against one without (local resources must lose nothing).
stop_one() {            # stop_one NAME
        local p=${pid[$1]}
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
        pids=("${pids[@]/#$p/}")
}
run_cluster() {
        local lock=$build/bench/agen-etcd-lock eps c r cfg ok order
        [[ -x $lock ]] || { log "agen-etcd-lock was not built: no cluster runs"; return 0; }
        ((have_etcd)) || { log "no etcd: no cluster runs"; return 0; }
        etcd_cluster_dir=$tmp/etcd-cluster
        eps=$(tests/etcd-cluster.sh start "$etcd_cluster_dir" 3 1800)
        mkdir -p "$tmp/agend-cluster" "$tmp/agend-nocluster"
        printf '[Cluster]\nEndpoints=%s\nNode=bench-a\n\n[Resource]\nName=bench-cluster\nCapacity=1\nScope=cluster\n' \
                "$eps" >"$tmp/agend-cluster/agend.conf"
        : >"$tmp/agend-nocluster/agend.conf"
        start_agend agend-cluster --config "$tmp/agend-cluster/agend.conf"
        start_agend agend-nocluster --config "$tmp/agend-nocluster/agend.conf"
        # Ready for cluster scope once it holds its etcd lease and has read the prefix.
        ok=0
        for _ in $(seq 100); do
                "$lock" --agend "${sock[agend-cluster]}" --resource bench-cluster --duration 0.2 --warmup 0 \
                        >/dev/null 2>&1 && { ok=1; break; }
                sleep 0.2
        done
        ((ok)) || log "agend-cluster never served its cluster resource"
        for ((r = 1; r <= rounds; r++)); do
                for c in 1 4 16; do
                        log "cluster scope, $c contenders: etcd lock recipe, then agend"
                        "$lock" --endpoints "$eps" --clients "$c" --duration "$duration" --warmup "$warmup" \
                                --label etcd-lock >>"$results" || log "etcd lock recipe ($c) had errors"
                        "$lock" --agend "${sock[agend-cluster]}" --resource bench-cluster --clients "$c" \
                                --duration "$duration" --warmup "$warmup" --label agend-cluster >>"$results" ||
                                log "agend cluster scope ($c) had errors"
                done
                # Acquire latency alone: 10 ms between a release and the next acquire, so
                # that nothing of the previous cycle (agend answers Release before etcd
                # has deleted the key) is still on its way.
                log "cluster scope, 1 contender with a 10 ms gap: etcd lock recipe, then agend"
                "$lock" --endpoints "$eps" --clients 1 --gap 0.01 --duration "$duration" --warmup "$warmup" \
                        --label etcd-lock-gap >>"$results" || log "etcd lock recipe (gap) had errors"
                "$lock" --agend "${sock[agend-cluster]}" --resource bench-cluster --clients 1 --gap 0.01 \
                        --duration "$duration" --warmup "$warmup" --label agend-cluster-gap >>"$results" ||
                        log "agend cluster scope (gap) had errors"
                # Which agend goes first alternates by round, so that an order effect (the
                # VM's load drifting within a round) does not always favour the same one.
                order=(agend-nocluster agend-cluster)
                ((r % 2 == 0)) && order=(agend-cluster agend-nocluster)
                for c in 1 16; do
                        for cfg in "${order[@]}"; do
                                log "local cycle, $c clients, $cfg"
                                "$bench" cycle --target agend --socket "${sock[$cfg]}" --clients "$c" \
                                        --duration "$duration" --warmup "$warmup" --server-pid "${pid[$cfg]}" \
                                        --label "local-$cfg" --prefix "l$r" >>"$results" ||
                                        log "local cycle $cfg c=$c had errors"
                        done
                done
        done
        stop_one agend-cluster
        stop_one agend-nocluster
        tests/etcd-cluster.sh stop "$etcd_cluster_dir"
        etcd_cluster_dir=
}
cluster_lines() {
        grep -h '"mode":"\(etcd-lock\|agend-cluster\)"\|"label":"local-agend-' "$results"
}
if ((cluster_only)); then
        run_cluster
        cluster_lines
        log "results in $out"
        exit 0
fi

# ---- machine ----
{
        echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
        echo "nproc: $(nproc)"
        echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
        echo "kernel: $(uname -r)"
        echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
        dev=$(df --output=source "$tmp" | tail -1)
        echo "filesystem: $(df --output=fstype "$tmp" | tail -1 | tr -d ' ') on $dev"
        b=$(basename "$dev"); b=${b%%[0-9]*}
        [[ -r /sys/block/$b/queue/rotational ]] &&
                echo "disk: $b rotational=$(cat /sys/block/$b/queue/rotational) scheduler=$(cat /sys/block/$b/queue/scheduler)"
        echo "agend: $("$agend" --version 2>/dev/null | head -1) sqlite $(pkg-config --modversion sqlite3 2>/dev/null)"
        ((have_redis)) && echo "redis: $(redis-server --version)"
        ((have_etcd)) && echo "etcd: $(etcd --version | head -1)"
} >"$out/machine.txt"
cat "$out/machine.txt" >&2

# ---- floor ----
log "floor probes"
"$bench" floor --dir "$tmp" --duration 2 --label floor >>"$results"

# ---- lease cycles, all peers, interleaved ----
start_agend agend-full --sync=full
start_agend agend-normal --sync=normal
configs=(agend-full agend-normal)
if ((have_redis)); then
        start_redis redis-always --appendonly yes --appendfsync always
        start_redis redis-everysec --appendonly yes --appendfsync everysec
        configs+=(redis-always redis-everysec)
fi
if ((have_etcd)); then
        start_etcd etcd
        configs+=(etcd)
fi

points=("1 1" "16 1" "64 1" "64 16")
for ((round = 1; round <= rounds; round++)); do
        for pt in "${points[@]}"; do
                read -r c k <<<"$pt"
                for cfg in "${configs[@]}"; do
                        case $cfg in
                        agend-*) tgt=(--target agend --socket "${sock[$cfg]}") ;;
                        redis-*) tgt=(--target redis --socket "${sock[$cfg]}") ;;
                        etcd) tgt=(--target etcd --addr "${addr[$cfg]}") ;;
                        esac
                        "$bench" cycle "${tgt[@]}" --clients "$c" --inflight "$k" --duration "$duration" \
                                --warmup "$warmup" --server-pid "${pid[$cfg]}" --label "$cfg" \
                                --prefix "r$round" >>"$results" || log "$cfg c=$c k=$k had errors"
                done
        done
done

# ---- the ceiling: agend on a store that keeps nothing, beside agend and Redis, 64 × 1 ----
# Three rounds, every configuration in each, so that ratios come from the same rounds.
if ((ceiling)); then
        log "ceiling: agend without its store, 64 x 1"
        agend_bin=$agend_hooks agend_env=AGEND_TEST_STORE=memory start_agend nostore-normal --sync=normal
        agend_bin=$agend_hooks agend_env=AGEND_TEST_STORE=memory start_agend nostore-full --sync=full
        ceil=(nostore-normal nostore-full agend-normal agend-full)
        ((have_redis)) && ceil+=(redis-everysec redis-always)
        for round in 1 2 3; do
                for cfg in "${ceil[@]}"; do
                        case $cfg in
                        redis-*) tgt=(--target redis --socket "${sock[$cfg]}") ;;
                        *) tgt=(--target agend --socket "${sock[$cfg]}") ;;
                        esac
                        "$bench" cycle "${tgt[@]}" --clients 64 --inflight 1 --duration "$duration" \
                                --warmup "$warmup" --server-pid "${pid[$cfg]}" --label "ceiling-$cfg" \
                                --prefix "c$round" >>"$results" || log "ceiling $cfg had errors"
                done
        done
fi

# ---- where agend's time goes at 64 clients: a perf profile of each durability ----
if ((perf)) && command -v perf >/dev/null; then
        for cfg in agend-full agend-normal; do
                log "perf profile of $cfg at 64 clients"
                perf record -q -F 1999 -g -p "${pid[$cfg]}" -o "$tmp/perf-$cfg.data" -- sleep "$duration" \
                        >/dev/null 2>&1 &
                perfpid=$!; pids+=("$perfpid")
                "$bench" cycle --target agend --socket "${sock[$cfg]}" --clients 64 --duration "$duration" \
                        --warmup 0 --server-pid "${pid[$cfg]}" --label "$cfg-perf" --prefix perf >/dev/null || true
                wait "$perfpid" 2>/dev/null || true
                pids=("${pids[@]/#$perfpid/}")
                perf report -q -i "$tmp/perf-$cfg.data" --stdio --no-children --percent-limit 1.5 \
                        --sort dso,symbol -g none 2>/dev/null >"$out/perf-$cfg.txt" || true
                perf report -q -i "$tmp/perf-$cfg.data" --stdio --children --percent-limit 5 \
                        --sort symbol -g none 2>/dev/null >"$out/perf-$cfg-children.txt" || true
        done
fi

# The floor again: fsync speed drifts on a VM; both probes bracket the cycle runs.
"$bench" floor --dir "$tmp" --duration 2 --label floor-after >>"$results"

# ---- contention (agend, default durability) ----
log "contention"
"$bench" contention --socket "${sock[agend-normal]}" --server-pid "${pid[agend-normal]}" --clients 64 \
        --resource bench-mutex --capacity 1 --duration "$duration" --warmup "$warmup" --label mutex \
        >>"$results" || log "contention (mutex) had errors"
# A counted resource needs a declared capacity: in a config file the daemon reads.
if "$agend" --help 2>&1 | grep -q -- '--config'; then
        mkdir -p "$tmp/agend-cap"
        cat >"$tmp/agend-cap/agend.conf" <<'EOF'
[Resource]
Name=bench-cap8
Capacity=8
EOF
        start_agend agend-cap --config "$tmp/agend-cap/agend.conf"
        if "$bench" contention --socket "${sock[agend-cap]}" --server-pid "${pid[agend-cap]}" --clients 64 \
                --resource bench-cap8 --capacity 8 --duration "$duration" --warmup "$warmup" --label cap8 \
                >>"$results"; then :; else log "contention (capacity 8) had errors"; fi
fi

# ---- Watch fan-out: 64 subscribers on everything at 20 k events/s (issue 12) ----
# Both durabilities; a perf profile of the default one, where the time goes if it falls behind.
if ((quick)); then fdur=$duration; else fdur=10; fi
for ((round = 1; round <= rounds; round++)); do
        for cfg in agend-full agend-normal; do
                log "watch fan-out, $cfg"
                "$bench" watch-fanout --socket "${sock[$cfg]}" --server-pid "${pid[$cfg]}" --subscribers 64 \
                        --event-rate 20000 --duration "$fdur" --warmup "$warmup" --label "$cfg" \
                        --prefix "f$round" >>"$results" || log "watch fan-out ($cfg) had errors"
        done
done
if ((perf)) && command -v perf >/dev/null; then
        cfg=agend-normal
        perf record -q -F 1999 -g -p "${pid[$cfg]}" -o "$tmp/perf-fanout.data" -- sleep "$duration" \
                >/dev/null 2>&1 &
        perfpid=$!; pids+=("$perfpid")
        "$bench" watch-fanout --socket "${sock[$cfg]}" --server-pid "${pid[$cfg]}" --subscribers 64 \
                --event-rate 20000 --duration "$duration" --warmup 0 --label "$cfg-perf" --prefix fperf \
                >/dev/null 2>&1 || true
        wait "$perfpid" 2>/dev/null || true
        pids=("${pids[@]/#$perfpid/}")
        perf report -q -i "$tmp/perf-fanout.data" --stdio --no-children --percent-limit 1.5 \
                --sort dso,symbol -g none 2>/dev/null >"$out/perf-fanout.txt" || true
fi

if ((cluster)); then
        run_cluster
fi

# ---- stop the peers before the scale runs: those want the machine to themselves ----
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()

if ((scale)); then
        if ((quick)); then nl=100000 nc=2000; else nl=1000000 nc=10000; fi
        log "scale: $nl leases"
        "$bench" scale-leases --agend "$agend" --count "$nl" --label "leases-$nl" >>"$results" ||
                log "scale-leases had errors"
        log "scale: $nc connections"
        "$bench" scale-conns --agend "$agend" --count "$nc" --duration "$duration" --label "conns-$nc" \
                >>"$results" || log "scale-conns had errors"
fi

log "cleanup latency per layer"
"$bench" cleanup --agend "$agend" --count 1000 --label cleanup >>"$results" || log "cleanup: not measured"

# ---- tables and chart ----
field() {       # field JSON KEY
        sed -n "s/.*\"$2\":\(\"[^\"]*\"\|[^,}]*\).*/\1/p" <<<"$1" | tr -d '"'
}
tsv=$out/cycles.tsv
printf 'config\tclients\tinflight\tcycles_per_s\tp50_us\tp99_us\tacq_p99_us\tserver_us_per_cycle\tclient_us_per_cycle\terrors\twal_bytes_per_cycle\twal_pages_per_commit\n' >"$tsv"
while read -r line; do
        [[ $(field "$line" kind) == cycle ]] || continue
        printf '%s\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f\t%.1f\t%s\t%s\t%s\n' "$(field "$line" label)" \
                "$(field "$line" clients)" "$(field "$line" inflight)" "$(field "$line" cycles_per_s)" \
                "$(field "$line" cycle_p50_us)" "$(field "$line" cycle_p99_us)" "$(field "$line" acquire_p99_us)" \
                "$(field "$line" server_cpu_us_per_cycle)" "$(field "$line" client_cpu_us_per_cycle)" \
                "$(field "$line" errors)" "$(field "$line" wal_bytes_per_cycle)" \
                "$(field "$line" wal_pages_per_commit)" >>"$tsv"
done <"$results"

{
        echo "| config | clients × in flight | cycles/s | p50 µs | p99 µs | acquire p99 µs | server CPU µs/cycle | client CPU µs/cycle | errors | WAL B/cycle | WAL pages/commit |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        tail -n +2 "$tsv" | while IFS=$'\t' read -r cfg c k r p50 p99 a99 s cl e wb wp; do
                echo "| $cfg | $c × $k | $r | $p50 | $p99 | $a99 | $s | $cl | $e | $wb | $wp |"
        done
        echo
        grep -h '"kind":"\(floor\|contention\|watch_fanout\|scale_leases\|scale_conns\|cleanup\)"' "$results" |
                sed 's/^/    /'
        cluster_lines | sed 's/^/    /' || true
} >"$out/summary.md"

if command -v gnuplot >/dev/null; then
        # One data file per config: x = point index (1, 16, 64, 64x16), cycles/s, p99 ms.
        for cfg in "${configs[@]}"; do
                awk -F'\t' -v cfg="$cfg" 'NR > 1 && $1 == cfg {
                        x = ($2 == 1) ? 0 : ($2 == 16) ? 1 : ($3 == 1) ? 2 : 3
                        print x, $4, $6 / 1000 }' "$tsv" | sort -n >"$out/$cfg.dat"
        done
        plots1= plots2=
        for cfg in "${configs[@]}"; do
                plots1+="'$out/$cfg.dat' using 1:2 with linespoints title '$cfg', "
                plots2+="'$out/$cfg.dat' using 1:3 with linespoints title '$cfg', "
        done
        for fmt in svg png; do
                if [[ $fmt == svg ]]; then term="svg size 1000,420 font 'sans,11' background '#ffffff'"
                else term="pngcairo size 1000,420 font 'sans,10'"; fi
                gnuplot <<EOF || log "gnuplot failed"
set terminal $term
set output '$out/cycles.$fmt'
set multiplot layout 1,2 title 'Lease cycles (acquire + release), one run, same machine'
set xtics ('1' 0, '16' 1, '64' 2, '64x16' 3)
set xlabel 'clients (x in flight)'
set grid
set key top left
set logscale y
set ylabel 'cycles/s'
plot ${plots1%, }
set ylabel 'cycle p99 (ms)'
plot ${plots2%, }
unset multiplot
EOF
        done
fi

cat "$out/summary.md"
log "results in $out (results.jsonl, cycles.tsv, summary.md, machine.txt, cycles.svg/png)"
