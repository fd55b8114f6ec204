#!/usr/bin/env bash
# Where our edge spends its time on one benchmark case (issue 5): runs bench/run.sh for that
# case alone and, while ours is measured, records the edge with perf. Writes a flame graph, the
# top symbols and the system calls. Run as root from anywhere:
#   bash bench/profile.sh 3                 # or: make profile CASE=3
# Cases: 1 2 3 4 5 6 1r t1 t2, as in bench/run.sh. Environment:
#   PROFILE_SECONDS  seconds recorded (default 8)
#   PROFILE_OUT      the folder written (default target/profile)
# It installs perf (Debian's linux-perf) when missing, and inferno (the flame graph renderer,
# from crates.io) into target/tools.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { printf '[profile] FAILED: %s\n' "$*" >&2; exit 1; }
log() { printf '[profile %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

CASE=${1:-1}
[[ $CASE =~ ^(1|2|3|4|5|6|1r|t1|t2)$ ]] || die "unknown case '$CASE' (cases: 1 2 3 4 5 6 1r t1 t2)"
SECONDS_RECORDED=${PROFILE_SECONDS:-8}
[[ $SECONDS_RECORDED =~ ^[0-9]+$ ]] && ((SECONDS_RECORDED > 0 && SECONDS_RECORDED <= 60)) ||
  die "PROFILE_SECONDS must be 1 to 60"
OUT=${PROFILE_OUT:-$ROOT/target/profile}
mkdir -p "$OUT"

if ! command -v perf >/dev/null 2>&1; then
  [[ $(id -u) == 0 ]] || die "perf is missing; run as root or install linux-perf"
  log "installing linux-perf"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
fi
TOOLS=$ROOT/target/tools
if [[ ! -x $TOOLS/bin/inferno-flamegraph ]]; then
  log "installing inferno into $TOOLS"
  cargo install --quiet --locked inferno --root "$TOOLS" || die "cannot install inferno"
fi

# The run lasts long enough for the recording, which starts a second into ours' measured run
# (round 1 measures ours first).
BENCH_LOG=$OUT/bench-case-$CASE.log
BENCH_CASES=$CASE BENCH_SECONDS=$((SECONDS_RECORDED + 3)) BENCH_ROUNDS=1 BENCH_MICRO=0 \
  BENCH_OUT=$OUT/bench-case-$CASE.md bash bench/run.sh >"$BENCH_LOG" 2>&1 &
BENCH=$!
trap 'kill $BENCH 2>/dev/null || true' EXIT
log "running the benchmark for case $CASE (log: $BENCH_LOG)"
for ((n = 0; n < 1800; n++)); do # the release build may take minutes: 15 min at most
  grep -q 'measuring:' "$BENCH_LOG" 2>/dev/null && break
  kill -0 "$BENCH" 2>/dev/null || die "the benchmark ended early: $(tail -n 5 "$BENCH_LOG")"
  sleep 0.5
done
grep -q 'measuring:' "$BENCH_LOG" || die "the benchmark never started measuring"
EDGE_PID=$(sed -n 's/.*our edge runs as pid \([0-9]*\).*/\1/p' "$BENCH_LOG")
[[ -n $EDGE_PID ]] || die "no edge pid in $BENCH_LOG"
sleep 1

DATA=$OUT/perf-case-$CASE.data
rm -f "$DATA" "$DATA.old"
log "recording pid $EDGE_PID for $SECONDS_RECORDED s"
perf record -q -F 999 -g --call-graph dwarf,16384 -p "$EDGE_PID" -o "$DATA" -- sleep "$SECONDS_RECORDED" \
  2>"$OUT/perf-record.log" || die "perf record failed: $(tail -n 3 "$OUT/perf-record.log")"
wait "$BENCH" || die "the benchmark failed: $(tail -n 5 "$BENCH_LOG")"
trap - EXIT

log "rendering"
TOP=$OUT/top-case-$CASE.txt
{
  echo "# case $CASE: share of the edge's CPU by binary, then by function (self time)"
  perf report -i "$DATA" --no-children --sort dso --stdio -g none 2>/dev/null | { grep -v '^#' || true; } | sed '/^$/d'
  echo
  perf report -i "$DATA" --no-children --sort symbol --stdio -g none 2>/dev/null | { grep -v '^#' || true; } | sed '/^$/d' | sed -n '1,60p'
} >"$TOP"
perf script -i "$DATA" 2>/dev/null | "$TOOLS/bin/inferno-collapse-perf" >"$OUT/stacks-case-$CASE.txt"
# How much of it runs in this project's code (inclusive: its hooks and what they call; not
# custom_pages::server, whose connection wrapper is under everything).
awk '{ n = $NF; total += n; if ($0 ~ /custom_pages::(proxy|pages|cache|upstream|filters|metrics|access_log|config|edge)/) ours += n }
     END { if (total > 0) printf "\n%.1f%% of the samples are in custom_pages code (inclusive)\n", 100 * ours / total }' \
  "$OUT/stacks-case-$CASE.txt" >>"$TOP"
"$TOOLS/bin/inferno-flamegraph" --title "custom-pages, bench case $CASE" \
  <"$OUT/stacks-case-$CASE.txt" >"$OUT/flamegraph-case-$CASE.svg"
grep -E "round 1 case $CASE (ours|nginx)" "$BENCH_LOG" | sed 's/^\[bench [0-9:]*\] //' || true
log "wrote $OUT/flamegraph-case-$CASE.svg and $TOP"
