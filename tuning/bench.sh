#!/usr/bin/env bash
# Standard load-generator scenarios against tcp-integration, one summary table at the end.
#
# For each scenario: start `tcp-integration run` (pinned with taskset) pointed at the load
# generator's embedded sink, then run `tcp-loadgen` (sink + devices, pinned to its own core) with
# --server-pid so the server's CPU and memory are accounted. The integration retries its
# connection until the sink is up, so the order of the two starts does not matter.
#
# Scenarios (targets are reported, not asserted):
#   baseline  generator against a no-op TCP sink (its own ceiling)
#   a-text    max throughput, TEXT, 1 shard, batched writes       target ≥ 300k frames/s, no loss
#   b-10k     10,000 devices at 1 frame/s                          target CPU ≤ 10 %, p99 ≤ linger + 2 ms
#   c-idle    10,000 idle connections                              target ≤ 4 KiB RSS per connection
#   d-dl-idle downlink RTT with little uplink traffic              target p99 ≤ loopback RTT + 1 ms
#   d-dl-load downlink RTT under the (a) load
#   e-json / e-binary  as (a) for the other formats
#   f-outage  (a)-like TEXT load at a steady rate; the sink (Edge) is killed 5 s after sending
#             starts and back 10 s later (--sink-outage 5:10)  target 0 lost, dups ≤ 8 × 500
#
# Environment knobs (defaults in brackets):
#   DURATION [10] WARMUP [2] seconds per scenario; SERVER_CORE [0] for the shard;
#   UPLINK_CORE [1] for the server's uplink thread; LOADGEN_CORE [1]; SINK_PORT [9090];
#   DEVICE_PORT [10560]; SCENARIOS ["baseline a-text b-10k c-idle d-dl-idle d-dl-load e-json e-binary f-outage"];
#   f-outage: OUTAGE_RATE [500] frames/s per connection (64 connections), OUTAGE_DURATION [20]
#   seconds (must outlast 5 + 10 s), OUTAGE_UNACKED_MS [0] (--sink-outage-unacked-ms);
#   OUT [a fresh temp dir] for JSON, SVG and logs; SKIP_BUILD=1 to reuse the binaries;
#   BIN_DIR [target/release] where the binaries are; SERVER_FLAGS [none] extra `run` flags
#   (e.g. "--ring-depth 4096") to compare settings.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SERVER_CORE=${SERVER_CORE:-0}
UPLINK_CORE=${UPLINK_CORE:-1}
LOADGEN_CORE=${LOADGEN_CORE:-1}
SINK_PORT=${SINK_PORT:-9090}
DEVICE_PORT=${DEVICE_PORT:-10560}
SCENARIOS=${SCENARIOS:-"baseline a-text b-10k c-idle d-dl-idle d-dl-load e-json e-binary f-outage"}
OUTAGE_RATE=${OUTAGE_RATE:-500}
OUTAGE_DURATION=${OUTAGE_DURATION:-20}
OUTAGE_UNACKED_MS=${OUTAGE_UNACKED_MS:-0}
ROUTING_KEY=bench-routing-key
SECRET=bench-secret
tmp=$(mktemp -d /tmp/tcp-bench.XXXXXX)
OUT=${OUT:-$tmp}
mkdir -p "$OUT"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release --workspace
fi
BIN_DIR=${BIN_DIR:-target/release}
SERVER=$BIN_DIR/tcp-integration
LOADGEN=$BIN_DIR/tcp-loadgen

server_pid=""
stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap stop_server EXIT

start_server() { # $1 = scenario name
  rm -rf "$tmp/spool"
  RPC_HOST=127.0.0.1 RPC_PORT=$SINK_PORT \
  INTEGRATION_ROUTING_KEY=$ROUTING_KEY INTEGRATION_SECRET=$SECRET \
    taskset -c "$SERVER_CORE,$UPLINK_CORE" "$SERVER" run --nr-shards 1 ${SERVER_FLAGS:-} \
      --shard-cores "$SERVER_CORE" --uplink-core "$UPLINK_CORE" --spool-dir "$tmp/spool" \
      >"$OUT/$1.server.log" 2>&1 &
  server_pid=$!
}

loadgen() { # $1 = scenario name, rest = tcp-loadgen flags; SCENARIO_DURATION overrides DURATION
  local name=$1; shift
  taskset -c "$LOADGEN_CORE" "$LOADGEN" --threads 1 --sink-listen "127.0.0.1:$SINK_PORT" \
    --target "127.0.0.1:$DEVICE_PORT" --routing-key "$ROUTING_KEY" --secret "$SECRET" \
    --duration "${SCENARIO_DURATION:-$DURATION}" --warmup "$WARMUP" --json "$OUT/$name.json" --plot "$OUT/$name.svg" \
    "$@" 2>"$OUT/$name.progress.log" | tee "$OUT/$name.table.txt"
}

scenario() { # $1 = name, rest = tcp-loadgen flags; runs against a fresh server
  local name=$1; shift
  echo "=== $name: $*" >&2
  start_server "$name"
  if ! loadgen "$name" --server-pid "$server_pid" "$@"; then
    echo "scenario $name failed; see $OUT/$name.*.log" >&2
  fi
  stop_server
}

MAX_FLAGS=(--connections 64 --max --frames-per-write 64)
for s in $SCENARIOS; do
  case $s in
    baseline)
      taskset -c "$SERVER_CORE" "$LOADGEN" --noop-server --target "127.0.0.1:$DEVICE_PORT" --quiet \
        >"$OUT/baseline.server.log" 2>&1 &
      noop_pid=$!
      sleep 0.5
      echo "=== baseline: no-op TCP sink" >&2
      loadgen baseline --no-sink --format text "${MAX_FLAGS[@]}" --server-pid "$noop_pid" || true
      kill -INT "$noop_pid" 2>/dev/null || true
      wait "$noop_pid" 2>/dev/null || true
      ;;
    a-text)    scenario a-text --format text "${MAX_FLAGS[@]}" ;;
    b-10k)     scenario b-10k --format text --connections 10000 --rate 1 \
                 --source-ips 127.0.0.2-127.0.0.9 --connect-rate 5000 ;;
    c-idle)    scenario c-idle --format text --connections 10000 --idle \
                 --source-ips 127.0.0.2-127.0.0.9 --connect-rate 5000 ;;
    d-dl-idle) scenario d-dl-idle --format text --connections 10 --rate 1 --downlink-rate 200 ;;
    d-dl-load) scenario d-dl-load --format text "${MAX_FLAGS[@]}" --downlink-rate 1000 ;;
    e-json)    scenario e-json --format json "${MAX_FLAGS[@]}" ;;
    e-binary)  scenario e-binary --format binary "${MAX_FLAGS[@]}" ;;
    f-outage)  SCENARIO_DURATION=$OUTAGE_DURATION scenario f-outage --format text --connections 64 \
                 --rate "$OUTAGE_RATE" --sink-outage 5:10 --sink-outage-unacked-ms "$OUTAGE_UNACKED_MS" ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done

# One summary row per scenario from its JSON report.
printf '\n%-10s %12s %12s %8s %6s %9s %9s %9s %8s %12s %10s %10s\n' \
  scenario sent/s delivered/s lost dups p50_us p99_us max_us cpu_% frames/cpu_s rss/conn_B dl_p99_us
for s in $SCENARIOS; do
  f="$OUT/$s.json"
  [[ -f "$f" ]] || { printf '%-10s (no report)\n' "$s"; continue; }
  jq -r --arg s "$s" '[
      $s,
      (.sent_fps | floor),
      (.delivered_fps | floor),
      (if .loss then .loss.lost else "-" end),
      (if .loss then .loss.duplicates else "-" end),
      .latency.p50_us, .latency.p99_us, .latency.max_us,
      (if .server then (.server.cpu_pct_of_core * 10 | floor) / 10 else "-" end),
      (if .server then (.server.frames_per_cpu_s | floor) else "-" end),
      (if .server and .server.rss_per_connection_bytes then (.server.rss_per_connection_bytes | floor) else "-" end),
      (if .downlink then .downlink.rtt.p99_us else "-" end)
    ] | @tsv' "$f" |
    awk -F'\t' '{ printf "%-10s %12s %12s %8s %6s %9s %9s %9s %8s %12s %10s %10s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12 }'
done
# What the outage scenario's sink saw around its outage.
for s in $SCENARIOS; do
  f="$OUT/$s.json"
  [[ -f "$f" ]] || continue
  jq -r --arg s "$s" 'select(.outage) | .outage |
      "\($s): sink cut at \(.started_s) s, back at \(.ended_s) s, reconnect after \(.reconnect_s) s; " +
      "records \(.records_before) before (\(.records_unacked) unacked), \(.records_after) after; " +
      "\(.sessions_accepted) sessions accepted"' "$f"
done
echo "reports, plots and logs: $OUT" >&2
