#!/usr/bin/env bash
# `make fleet`: a 3-member etcd cluster on loopback, the shipped rules imported into it, and two
# edges sharing them, behind the demo origin. Everything lives in the folder given ($1) and
# stops on Ctrl-C.
set -euo pipefail
dir=$(realpath "$1") origin=$2
bin=${BIN_DIR:-./target/release}/custom-pages
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

cluster="m1=http://127.0.0.1:12380,m2=http://127.0.0.1:22380,m3=http://127.0.0.1:32380"
for i in 1 2 3; do
  etcd --name "m$i" --data-dir "$dir/m$i" \
    --listen-client-urls "http://127.0.0.1:${i}2379" --advertise-client-urls "http://127.0.0.1:${i}2379" \
    --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token custom-pages-fleet \
    --heartbeat-interval 50 --election-timeout 500 >"$dir/m$i.log" 2>&1 &
  pids+=($!)
done
endpoints="http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379"
for _ in $(seq 50); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" --dial-timeout=1s --command-timeout=1s endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

${BIN_DIR:-./target/release}/examples/demo_origin --listen "$origin" --root demo/site &
pids+=($!)

for edge in a b; do
  port=$([ $edge = a ] && echo 6188 || echo 6288)
  admin=$([ $edge = a ] && echo 6189 || echo 6289)
  sed -e "s/0.0.0.0:6188/127.0.0.1:$port/" -e "s/127.0.0.1:6189/127.0.0.1:$admin/" conf/edge.yaml > "$dir/$edge.yaml"
  printf 'source:\n  etcd:\n    endpoints: ["%s"]\n    prefix: /custom-pages/\n    snapshot: %s-snapshot.json\n    edge_id: %s\n' \
    "${endpoints//,/\", \"}" "$edge" "$edge" >> "$dir/$edge.yaml"
  printf 'server:\n  pid_file: %s/%s.pid\n  upgrade_sock: %s/%s.sock\n' "$dir" "$edge" "$dir" "$edge" >> "$dir/$edge.yaml"
  sed -i '/^server: {}/d' "$dir/$edge.yaml"
done
$bin etcd import -c "$dir/a.yaml" conf/domains

export CUSTOM_PAGES_ADMIN_TOKEN=${CUSTOM_PAGES_ADMIN_TOKEN:-demo-token}
for edge in a b; do
  $bin -c "$dir/$edge.yaml" 2>"$dir/$edge.log" &
  pids+=($!)
done
cat <<EOF
Two edges share the rules in etcd ($endpoints):
  edge a: http://127.0.0.1:6188  (admin and console http://127.0.0.1:6189, token $CUSTOM_PAGES_ADMIN_TOKEN)
  edge b: http://127.0.0.1:6288  (admin and console http://127.0.0.1:6289)
Try:
  curl -i -H 'Host: exp.example.com' localhost:6288/missing                 # the custom 404 page, from edge b
  curl -s -H "Authorization: Bearer $CUSTOM_PAGES_ADMIN_TOKEN" localhost:6189/api/fleet   # both edges and their revisions
  # change a rule on edge a, then ask edge b:
  curl -X PUT -H "Authorization: Bearer $CUSTOM_PAGES_ADMIN_TOKEN" -d '{"url": "http://exp.example.com/error5xx.html"}' \\
    localhost:6189/api/domains/exp.example.com/custom-pages/404
  curl -i -H 'Host: exp.example.com' localhost:6288/missing
  ETCDCTL_API=3 etcdctl --endpoints $endpoints get --prefix /custom-pages/ --keys-only
Logs and data: $dir. Ctrl-C stops everything.
EOF
wait
