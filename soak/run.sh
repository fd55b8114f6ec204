#!/usr/bin/env bash
# Soak test of the edge (issue 6): `make soak`, or `SOAK_SECONDS=60 bash soak/run.sh`.
#
# Builds the release edge and the demo origin, then soak/drive.py runs them on 127.0.0.1 with
# three domains on one origin for SOAK_SECONDS (default 600) of mixed HTTP/1.1 and h2c traffic,
# rule changes through the admin API every 3 s and two origin restarts, and prints a summary.
# Exit status 1 on an unexpected error or on RSS growth beyond SOAK_RSS_BOUND_MIB (default 64)
# over the warm-up level. Other knobs: SOAK_RATE (h1 requests/s, default 400), SOAK_WORKERS
# (default 8), SOAK_KEEP=1 keeps the work folder (logs, configuration).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
command -v python3 >/dev/null || { echo "soak: python3 is needed" >&2; exit 1; }
command -v curl >/dev/null || echo "soak: curl not found: the h2c part is skipped" >&2

"$CARGO" build --release --bin custom-pages --example demo_origin
target_dir=$("$CARGO" metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

exec python3 soak/drive.py \
  --edge-bin "$target_dir/release/custom-pages" \
  --origin-bin "$target_dir/release/examples/demo_origin"
