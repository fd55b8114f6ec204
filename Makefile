# custom-pages: `make run` starts the demo (edge + demo origin), `make test` runs every check.
CARGO ?= cargo
EDGE_CONF ?= conf/edge.yaml
DEMO_ORIGIN ?= 127.0.0.1:8080

.PHONY: all deps etcd-deps acme-deps browser-deps build run run-tls fleet test lint bench bench-scale profile soak mutants clean

all: build

# Pingora's core builds zlib-ng with cmake (flate2's zlib-ng feature); a fresh machine lacks it.
deps:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake (needed to build Pingora)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null; }
	@test -s /etc/ssl/certs/ca-certificates.crt || { \
	  echo "installing ca-certificates (the roots HTTPS origins are verified with)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >/dev/null; }
	@command -v protoc >/dev/null 2>&1 && test -f /usr/include/google/protobuf/timestamp.proto || { \
	  echo "installing protobuf-compiler (etcd-client compiles etcd's protocol at build time)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler libprotobuf-dev >/dev/null; }
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo is missing: install Rust (rustup)"; exit 1; }

# The fleet tests and `make fleet` start real etcd members (Debian's etcd 3.4).
etcd-deps:
	@command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1 || { \
	  echo "installing etcd-server and etcd-client (the fleet tests start real members)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null; }

build: deps
	$(CARGO) build --release --bin custom-pages --example demo_origin

# The edge on the shipped conf/ with the demo origin behind it. Ctrl-C stops both.
run: build
	@./target/release/examples/demo_origin --listen $(DEMO_ORIGIN) --root demo/site & \
	origin=$$!; trap 'kill $$origin 2>/dev/null' EXIT INT TERM; \
	./target/release/custom-pages -t -c $(EDGE_CONF) && \
	echo "edge on :6188 - try: curl -i -H 'Host: exp.example.com' localhost:6188/missing" && \
	echo "console on http://127.0.0.1:6189/ - token: $${CUSTOM_PAGES_ADMIN_TOKEN:-demo-token}" && \
	CUSTOM_PAGES_ADMIN_TOKEN=$${CUSTOM_PAGES_ADMIN_TOKEN:-demo-token} ./target/release/custom-pages -c $(EDGE_CONF)

# The same demo also over HTTPS on 127.0.0.1:6443, with a self-signed certificate for
# exp.example.com made once in target/demo-tls/ (see README, "HTTPS").
TLS_DIR ?= target/demo-tls
run-tls:
	@command -v openssl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
	@mkdir -p $(TLS_DIR)/domains
	@test -f $(TLS_DIR)/exp.pem || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	  -days 30 -subj /CN=exp.example.com -addext subjectAltName=DNS:exp.example.com \
	  -keyout $(TLS_DIR)/exp.key -out $(TLS_DIR)/exp.pem 2>/dev/null
	@{ cat conf/edge.yaml; printf 'tls:\n  listen: ["127.0.0.1:6443"]\n'; } > $(TLS_DIR)/edge.yaml
	@{ cat conf/domains/exp.example.com.yaml; printf 'tls: {cert: ../exp.pem, key: ../exp.key}\n'; } \
	  > $(TLS_DIR)/domains/exp.example.com.yaml
	@echo "HTTPS on :6443 - try: curl -i --cacert $(TLS_DIR)/exp.pem --resolve exp.example.com:6443:127.0.0.1 https://exp.example.com:6443/missing"
	@$(MAKE) --no-print-directory run EDGE_CONF=$(TLS_DIR)/edge.yaml

# A fleet on one machine: a 3-member etcd cluster, the shipped rules imported into it, and two
# edges (:6188 and :6288, admin :6189 and :6289) behind the demo origin. Ctrl-C stops all.
FLEET_DIR ?= target/fleet
fleet: build etcd-deps
	@command -v openssl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
	@rm -rf $(FLEET_DIR) && mkdir -p $(FLEET_DIR)
	@bash demo/fleet.sh $(FLEET_DIR) $(DEMO_ORIGIN)

# The ACME tests run a real ACME server: Debian's pebble and pebble-challtestsrv (its DNS).
acme-deps:
	@command -v pebble >/dev/null 2>&1 && command -v pebble-challtestsrv >/dev/null 2>&1 || { \
	  echo "installing pebble (the ACME tests run a real ACME server)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pebble >/dev/null; }

# The console's browser tests need Debian's Chromium and the Playwright package (npm).
browser-deps:
	@test -x /usr/bin/chromium || { \
	  echo "installing chromium (the console's browser tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing nodejs and npm (the console's browser tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	@test -d tests/console/node_modules/playwright-core || \
	  (cd tests/console && npm ci --no-audit --no-fund --loglevel=error)

# The example programs are built first: tests run them as a user would.
test: deps etcd-deps acme-deps browser-deps lint
	$(CARGO) build --examples --benches
	$(CARGO) test --lib --tests

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Side by side with nginx (installs nginx-light and wrk); writes BENCHMARKS.md. Not part of `test`.
bench: deps
	bash bench/run.sh

# The control plane with 1,000 to 100,000 domains, files and etcd (issue 22); writes the Scale
# section of BENCHMARKS.md. Not part of `test`. SCALE_N="1000 10000" SCALE_MODES=files to narrow.
bench-scale: deps etcd-deps
	python3 bench/scale.py

# perf + flame graph of our edge on one bench case: make profile CASE=3 (writes target/profile/).
CASE ?= 1
profile: deps
	bash bench/profile.sh $(CASE)

# Ten minutes of mixed traffic, rule changes and origin restarts (SOAK_SECONDS, default 600).
soak: deps
	bash soak/run.sh

# Mutation testing (cargo-mutants) of the modules that decide what a client gets, against the
# unit and property tests that cover them; figures in TESTING.md. Not part of `test`: it
# rebuilds once per mutant (hours for all of them). MUTANTS_FILES narrows it.
# MUTANTS_ARGS passes more options (`--iterate` tests again only what was not caught last time);
# MUTANTS_TESTS says which tests run against each mutant.
MUTANTS_FILES ?= src/cache/policy.rs src/pages/rules.rs src/pages/negotiate.rs src/pages/template.rs src/spec/*.rs
MUTANTS_ARGS ?=
MUTANTS_TESTS ?= --lib --test parsers
mutants: deps
	@command -v cargo-mutants >/dev/null 2>&1 || $(CARGO) install cargo-mutants --locked
	$(CARGO) mutants --profile mutants $(addprefix --file ,$(wildcard $(MUTANTS_FILES))) $(MUTANTS_ARGS) \
	  --output target/mutants -- $(MUTANTS_TESTS)

clean:
	$(CARGO) clean
