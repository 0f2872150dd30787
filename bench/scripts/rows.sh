#!/usr/bin/env bash
# The performance issue's rows, measured as docs/performance.md reports
# them: a separate nats-server (or a three-node R3 cluster) built from the
# module, a worker binary of a given commit, the bench against it.
#
#   bench/scripts/rows.sh build BEFORE AFTER   # binaries of two commits, in $WORK (default /tmp/rows)
#   bench/scripts/rows.sh one V                # batch under one admin token, separate nats-server
#   bench/scripts/rows.sh peruser V            # a token per user, and 1,000 sequential request-replies
#                                              # (REMOVALS=0: the request-replies without the batch before)
#   bench/scripts/rows.sh r3 V N [IN_FLIGHT]   # R3 cluster, N workers, batch under one admin token
#   bench/scripts/rows.sh mem V [USERS]        # the worker's memory at rest after syncing USERS
#                                              # (default 1,000,000): its last GC's heap, RssAnon,
#                                              # and the size of its store files
#
# NOSYNC=1 runs the workers with --store-nosync and provisions rules version 2, which it needs
# (versions that do not know the flags: NOSYNC unset).
# VERIFY=zip215 provisions the key set under that rule (checked in batches).
# SYNC=always runs every nats-server with jetstream { sync_interval: always }
# (each write fsynced before it is acknowledged); unset, the server's
# default (fsync every two minutes).
#
# USERS and N set the users and removals of "one" (default 20,000 each; a
# longer run: USERS=60000 N=180000); PARTITIONS the partitions of "one" and
# "peruser" (default 8). V is "before" or "after". Each run
# prints one line of figures. Run the versions alternately, three times at
# least, and take medians. With BALANCED=0 the bench starts once all
# partitions are served, before they are spread over the workers.
set -euo pipefail
SRC=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
WORK=${WORK:-/tmp/rows}
mkdir -p "$WORK"
cd "$WORK"
URL1=nats://127.0.0.1:4399
PARTS=${PARTITIONS:-8}
R3=nats://127.0.0.1:4301,nats://127.0.0.1:4302,nats://127.0.0.1:4303
SYNCCONF=""
[ "${SYNC:-}" = always ] && SYNCCONF="sync_interval: always"

stop_all() { # the workers first (they drain), then the servers; until all are gone
  pkill -f "$WORK/worker\.(before|after)" 2>/dev/null || true
  while pgrep -f "$WORK/worker\.(before|after)" >/dev/null; do sleep 0.1; done
  pkill -f "$WORK/nats-server" 2>/dev/null || true
  while pgrep -f "$WORK/nats-server" >/dev/null; do sleep 0.1; done
}

wait_served() { # n workers on http ports 9101.., until all 8 are served and (unless
  # BALANCED=0: then partitions still move during the run) each serves its share
  local n=$1
  for _ in $(seq 1 600); do
    local total=0 least=99
    for k in $(seq 1 "$n"); do
      s=$(curl -sf "http://127.0.0.1:910$k/metrics" | awk '/^passkeys_partitions_served /{print $2}' || true)
      s=${s:-0}; total=$((total + s)); [ "$s" -lt "$least" ] && least=$s
    done
    [ "$total" -ge "$PARTS" ] && { [ "${BALANCED:-1}" = 0 ] || [ "$least" -ge $((PARTS / n)) ]; } && return 0
    sleep 0.2
  done
  echo "partitions not served" >&2; return 1
}

start_workers() { # V URL N REPLICAS
  for k in $(seq 1 "$3"); do
    "$WORK/worker.$1" --nats-url "$2" --jwks jwks.json --issuer passkeys-dev --audience passkeys --replicas "$4" --partitions "$PARTS" \
      --data-dir "run/w$k" ${NOSYNC:+--store-nosync} --log-level warn --http-listen "127.0.0.1:910$k" > "run/w$k.log" 2>&1 &
  done
}

case ${1:-} in
build)
  for v in before after; do
    rev=$2; [ $v = after ] && rev=$3
    git -C "$SRC" worktree add -q --detach "$WORK/src-$v" "$rev"
    (cd "$WORK/src-$v" && go build -o "$WORK/worker.$v" ./cmd/worker)
    git -C "$SRC" worktree remove --force "$WORK/src-$v"
  done
  (cd "$SRC" && go build -o "$WORK/nats-server" github.com/nats-io/nats-server/v2 &&
    go build -o "$WORK/bench" ./cmd/bench && go build -o "$WORK/publisher" ./cmd/publisher)
  rm -rf keys && mkdir keys
  (timeout 10 "$WORK/worker.after" --data-dir keys --listen 127.0.0.1:0 --log-level error >/dev/null 2>&1 || true)
  "$WORK/publisher" jwks --data-dir keys > jwks.json
  echo "built in $WORK"
  ;;
one|peruser)
  V=$2; stop_all; rm -rf run; mkdir run
  echo "jetstream { $SYNCCONF }" > run/one.conf
  "$WORK/nats-server" -c run/one.conf -js -a 127.0.0.1 -p 4399 -sd "$WORK/run/js" > run/nats.log 2>&1 &
  until curl -s -o /dev/null --max-time 0.2 telnet://127.0.0.1:4399; [ $? -ne 7 ]; do sleep 0.1; done
  "$WORK/worker.$V" provision --nats-url $URL1 --partitions "$PARTS" --jwks jwks.json --issuer passkeys-dev --audience passkeys ${VERIFY:+--verify $VERIFY} ${NOSYNC:+--rules 2} --wait 30s > run/provision.log
  start_workers "$V" $URL1 1 1; wait_served 1
  if [ "$1" = one ]; then
    "$WORK/bench" --nats-url $URL1 --data-dir keys --users ${USERS:-20000} --removals ${N:-20000} --sequential 0 --tokens one --storage=false 2>run/bench.err | tail -1 > run/bench.json
    python3 -c "import json;d=json.load(open('run/bench.json'));print('$V one sync ${SYNC:-default}', round(d['batch']['per_second']), 'transport', round(d['ceiling_batch']['per_second']), 'ratio', round(d['ratio_to_ceiling'],3))"
  else
    "$WORK/bench" --nats-url $URL1 --data-dir keys --users 20000 --removals "${REMOVALS:-40000}" --sequential 1000 --storage=false 2>run/bench.err | tail -1 > run/bench.json
    python3 -c "import json;d=json.load(open('run/bench.json'));b=d.get('batch') or {'per_second':0};print('$V peruser sync ${SYNC:-default}', round(b['per_second']), 'verify', round((d.get('verify_ceiling_batch') or {'per_second':0})['per_second']), 'ratio', round(d.get('ratio_to_verify_ceiling',0),3), 'p50', round(d['sequential']['p50_ms'],3), 'p99', round(d['sequential']['p99_ms'],3), 'transport p50 / p99', round(d['ceiling_sequential']['p50_ms'],3), round(d['ceiling_sequential']['p99_ms'],3), 'above', round(d['sequential_p50_above_ceiling_ms'],3))"
  fi
  stop_all
  ;;
r3)
  V=$2; N=$3; INFLIGHT=${4:-1024}; stop_all; rm -rf run; mkdir run
  for i in 1 2 3; do
    cat > "run/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:430$i
http: 127.0.0.1:822$i
jetstream { store_dir: "$WORK/run/n$i", $SYNCCONF }
cluster { name: rows, listen: 127.0.0.1:630$i, routes: [nats-route://127.0.0.1:6301, nats-route://127.0.0.1:6302, nats-route://127.0.0.1:6303] }
CONF
    "$WORK/nats-server" -c "$WORK/run/n$i.conf" > "run/n$i.log" 2>&1 &
  done
  for i in 1 2 3; do until curl -sf "http://127.0.0.1:822$i/healthz?js-enabled-only=true" >/dev/null; do sleep 0.2; done; done
  "$WORK/worker.$V" provision --nats-url $R3 --replicas 3 --jwks jwks.json --issuer passkeys-dev --audience passkeys --wait 60s > run/provision.log
  start_workers "$V" $R3 "$N" 3; wait_served "$N"
  "$WORK/bench" --nats-url nats://127.0.0.1:4301 --data-dir keys --users 20000 --removals 40000 --sequential 0 --tokens one \
    --storage=false --in-flight "$INFLIGHT" 2>run/bench.err | tail -1 > run/bench.json
  python3 -c "import json;d=json.load(open('run/bench.json'));print('$V r3 sync ${SYNC:-default} workers $N', round(d['batch']['per_second']), 'transport', round(d['ceiling_batch']['per_second']), 'ratio', round(d['ratio_to_ceiling'],3))"
  stop_all
  ;;
mem)
  V=$2; stop_all; rm -rf run; mkdir run
  "$WORK/nats-server" -js -a 127.0.0.1 -p 4399 -sd "$WORK/run/js" > run/nats.log 2>&1 &
  until curl -s -o /dev/null --max-time 0.2 telnet://127.0.0.1:4399; [ $? -ne 7 ]; do sleep 0.1; done
  "$WORK/worker.$V" provision --nats-url $URL1 --jwks jwks.json --issuer passkeys-dev --audience passkeys --wait 30s > run/provision.log
  GODEBUG=gctrace=1 start_workers "$V" $URL1 1 1; wait_served 1
  pid=$(pgrep -f "$WORK/worker\.$V --nats-url")
  "$WORK/bench" --nats-url $URL1 --data-dir keys --users "${3:-1000000}" --removals 0 --sequential 0 --tokens one \
    --storage=false --ceiling=false 2>run/bench.err | tail -1 > run/bench.json
  # At rest: the runtime forces a GC two minutes after the last; then its
  # scavenger gives back what the heap no longer needs.
  sleep 200
  echo "$V mem users ${3:-1000000}: $(grep '^gc ' run/w1.log | tail -1 | grep -o '[0-9]*->[0-9]*->[0-9]* MB')" \
    "$(grep -E 'VmHWM|RssAnon' "/proc/$pid/status" | tr -s ' \t\n' ' ')" \
    "store files $(du -cb run/w1/partitions/*.db | tail -1 | cut -f1) bytes"
  stop_all
  ;;
*)
  awk 'NR > 1 && /^set /{exit} NR > 1' "$SRC/bench/scripts/rows.sh"; exit 2
  ;;
esac
