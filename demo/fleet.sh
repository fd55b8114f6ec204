#!/usr/bin/env bash
# `make fleet`: a 3-member etcd cluster on loopback (clients over TLS with certificates, etcd's
# authentication on), the shipped rules imported into it, and two edges sharing them, behind the
# demo origin. Everything lives in the folder given ($1) and
# stops on Ctrl-C.
set -euo pipefail
dir=$(realpath "$1") origin=$2
bin=${BIN_DIR:-./target/release}/custom-pages
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

# Clients reach etcd over TLS with a certificate of this fleet's CA, and log in as root.
tls="$dir/tls"
mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=fleet-ca \
  -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
for who in member:serverAuth,clientAuth edge:clientAuth; do
  name=${who%%:*} usage=${who#*:}
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$tls/$name.key" -out "$tls/$name.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=%s\n' "$usage" >"$tls/$name.ext"
  openssl x509 -req -in "$tls/$name.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 30 \
    -extfile "$tls/$name.ext" -out "$tls/$name.pem" 2>/dev/null
done
password=$(openssl rand -hex 16)
printf '%s\n' "$password" >"$dir/etcd.password"
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$endpoints" --cacert "$tls/ca.pem" --cert "$tls/edge.pem" --key "$tls/edge.key" "$@"; }

cluster="m1=http://127.0.0.1:12380,m2=http://127.0.0.1:22380,m3=http://127.0.0.1:32380"
for i in 1 2 3; do
  etcd --name "m$i" --data-dir "$dir/m$i" \
    --cert-file "$tls/member.pem" --key-file "$tls/member.key" --trusted-ca-file "$tls/ca.pem" --client-cert-auth \
    --listen-client-urls "https://127.0.0.1:${i}2379" --advertise-client-urls "https://127.0.0.1:${i}2379" \
    --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token custom-pages-fleet \
    --heartbeat-interval 50 --election-timeout 500 >"$dir/m$i.log" 2>&1 &
  pids+=($!)
done
endpoints="https://127.0.0.1:12379,https://127.0.0.1:22379,https://127.0.0.1:32379"
for _ in $(seq 50); do
  ctl --dial-timeout=1s --command-timeout=1s endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
ctl user add root --new-user-password "$password" >/dev/null
ctl user grant-role root root >/dev/null
ctl auth enable >/dev/null

${BIN_DIR:-./target/release}/examples/demo_origin --listen "$origin" --root demo/site &
pids+=($!)

for edge in a b; do
  port=$([ $edge = a ] && echo 6188 || echo 6288)
  admin=$([ $edge = a ] && echo 6189 || echo 6289)
  sed -e "s/0.0.0.0:6188/127.0.0.1:$port/" -e "s/127.0.0.1:6189/127.0.0.1:$admin/" conf/edge.yaml > "$dir/$edge.yaml"
  printf 'source:\n  etcd:\n    endpoints: ["%s"]\n    prefix: /custom-pages/\n    snapshot: %s-snapshot.json\n    edge_id: %s\n' \
    "${endpoints//,/\", \"}" "$edge" "$edge" >> "$dir/$edge.yaml"
  printf '    tls: {ca_file: tls/ca.pem, cert: tls/edge.pem, key: tls/edge.key}\n    user: root\n    password_file: etcd.password\n' \
    >> "$dir/$edge.yaml"
  printf 'server:\n  pid_file: %s/%s.pid\n  upgrade_sock: %s/%s.sock\n' "$dir" "$edge" "$dir" "$edge" >> "$dir/$edge.yaml"
  printf 'state_dir: %s-state\n' "$edge" >> "$dir/$edge.yaml"   # each edge its own: one writer per folder
  sed -i '/^server: {}/d' "$dir/$edge.yaml"
done
$bin etcd import -c "$dir/a.yaml" conf/domains

export CUSTOM_PAGES_ADMIN_TOKEN=${CUSTOM_PAGES_ADMIN_TOKEN:-demo-token}
for edge in a b; do
  $bin -c "$dir/$edge.yaml" 2>"$dir/$edge.log" &
  pids+=($!)
done
cat <<EOF
Two edges share the rules in etcd ($endpoints: TLS with client certificates of $tls/ca.pem,
and etcd's authentication on: user root, password in $dir/etcd.password):
  edge a: http://127.0.0.1:6188  (admin and console http://127.0.0.1:6189, token $CUSTOM_PAGES_ADMIN_TOKEN)
  edge b: http://127.0.0.1:6288  (admin and console http://127.0.0.1:6289)
Try:
  curl -i -H 'Host: exp.example.com' localhost:6288/missing                 # the custom 404 page, from edge b
  curl -s -H "Authorization: Bearer $CUSTOM_PAGES_ADMIN_TOKEN" localhost:6189/api/fleet   # both edges and their revisions
  # change a rule on edge a, then ask edge b:
  curl -X PUT -H "Authorization: Bearer $CUSTOM_PAGES_ADMIN_TOKEN" -d '{"url": "http://exp.example.com/error5xx.html"}' \\
    localhost:6189/api/domains/exp.example.com/custom-pages/404
  curl -i -H 'Host: exp.example.com' localhost:6288/missing
  ETCDCTL_API=3 etcdctl --endpoints $endpoints --cacert $tls/ca.pem --cert $tls/edge.pem --key $tls/edge.key \\
    --user root:\$(cat $dir/etcd.password) get --prefix /custom-pages/ --keys-only
Logs and data: $dir. Ctrl-C stops everything.
EOF
wait
