#!/usr/bin/env bash
# A real etcd cluster on loopback for shell users (bench/run.sh), the same as
# tests/helper-etcd.c does for C tests:
#
#   tests/etcd-cluster.sh start DIR [N] [LIFETIME_S]   starts N members (default 3), data and
#                                                      logs in DIR (created, must not exist),
#                                                      waits until each is healthy, prints the
#                                                      client URLs on one line
#   tests/etcd-cluster.sh stop DIR                     kills the members and the watchdog by
#                                                      pid, removes DIR
#
# Ports are picked free at run time (bound by python3, then released), members listen on
# 127.0.0.1 only, and a watchdog kills them by pid after LIFETIME_S (default 900) even if
# nobody calls stop.
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[[ -n $cmd && -n $dir ]] || { sed -n '2,16p' "$0" >&2; exit 2; }
etcd=${ETCD_BINARY:-$(command -v etcd || true)}

case $cmd in
start)
        n=${3:-3} lifetime=${4:-900}
        [[ -x $etcd ]] || { echo "etcd-cluster.sh: no etcd binary (apt-get install etcd-server)" >&2; exit 77; }
        mkdir "$dir"
        read -r -a ports < <(python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' $((2 * n)))
        cluster= urls=
        for ((i = 0; i < n; i++)); do
                cluster+="${cluster:+,}m$i=http://127.0.0.1:${ports[2 * i + 1]}"
                urls+="${urls:+ }http://127.0.0.1:${ports[2 * i]}"
        done
        for ((i = 0; i < n; i++)); do
                c=http://127.0.0.1:${ports[2 * i]} p=http://127.0.0.1:${ports[2 * i + 1]}
                setsid "$etcd" --name "m$i" --data-dir "$dir/m$i.etcd" \
                        --listen-client-urls "$c" --advertise-client-urls "$c" \
                        --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
                        --initial-cluster "$cluster" --initial-cluster-state new \
                        --initial-cluster-token "$dir" --heartbeat-interval 100 --election-timeout 1000 \
                        --logger zap --log-level warn </dev/null >"$dir/m$i.log" 2>&1 &
                echo $! >>"$dir/pids"
        done
        # The watchdog: kills the members by pid after the lifetime.
        (trap '' HUP; sleep "$lifetime"; xargs -r kill -9 <"$dir/pids") </dev/null >/dev/null 2>&1 &
        echo $! >"$dir/watchdog.pid"
        for u in $urls; do
                ok=0
                for _ in $(seq 300); do
                        if curl -s -m 2 "$u/health" 2>/dev/null | grep -q '"true"'; then ok=1; break; fi
                        sleep 0.1
                done
                ((ok)) || { echo "etcd-cluster.sh: $u did not become healthy" >&2; cat "$dir"/m*.log >&2; exit 1; }
        done
        echo "$urls" >"$dir/endpoints"
        echo "$urls"
        ;;
stop)
        [[ -f $dir/pids ]] || exit 0
        while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$dir/pids"
        [[ -f $dir/watchdog.pid ]] && kill -9 "$(cat "$dir/watchdog.pid")" 2>/dev/null || true
        rm -rf "$dir"
        ;;
*)
        echo "etcd-cluster.sh: unknown command $cmd" >&2; exit 2 ;;
esac
