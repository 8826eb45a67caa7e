#!/usr/bin/env bash
# agen-etcd-lock, the bench of the etcd lock recipe that agend's cluster scope is measured
# against (bench/run.sh), for a moment on a one-member etcd on loopback: both contenders
# must cycle without an error and the program must end cleanly (its teardown runs the loop
# again, where a timer left behind once crashed it). Skips (77) without etcd.
set -euo pipefail
lock=${1:?usage: test-bench-etcd-lock.sh AGEN_ETCD_LOCK}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
dir=$tmp/etcd
trap '"$here/etcd-cluster.sh" stop "$dir" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
k=0
eps=$("$here/etcd-cluster.sh" start "$dir" 1 120) || k=$?
((k == 0)) || exit "$k"
out=$("$lock" --endpoints "$eps" --clients 2 --duration 0.5 --warmup 0.2 --label smoke)
echo "$out"
python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1].splitlines()[-1])
assert r["mode"] == "etcd-lock", r
assert r["cycles"] > 0, "no cycle in 0.5 s"
assert r["errors"] == 0, r["first_error"]
PY
