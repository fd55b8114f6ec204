# custom-pages: `make run` starts the demo (edge + demo origin), `make test` runs every check.
CARGO ?= cargo
EDGE_CONF ?= conf/edge.yaml
DEMO_ORIGIN ?= 127.0.0.1:8080

.PHONY: all deps build run test lint bench profile soak clean

all: build

# Pingora's core builds zlib-ng with cmake (flate2's zlib-ng feature); a fresh machine lacks it.
deps:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake (needed to build Pingora)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null; }
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo is missing: install Rust (rustup)"; exit 1; }

build: deps
	$(CARGO) build --release --bin custom-pages --example demo_origin

# The edge on the shipped conf/ with the demo origin behind it. Ctrl-C stops both.
run: build
	@./target/release/examples/demo_origin --listen $(DEMO_ORIGIN) --root demo/site & \
	origin=$$!; trap 'kill $$origin 2>/dev/null' EXIT INT TERM; \
	./target/release/custom-pages -t -c $(EDGE_CONF) && \
	echo "edge on :6188 - try: curl -i -H 'Host: exp.example.com' localhost:6188/missing" && \
	./target/release/custom-pages -c $(EDGE_CONF)

# The example programs are built first: tests run them as a user would.
test: deps lint
	$(CARGO) build --examples --benches
	$(CARGO) test --lib --tests

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Side by side with nginx (installs nginx-light and wrk); writes BENCHMARKS.md. Not part of `test`.
bench: deps
	bash bench/run.sh

# perf + flame graph of our edge on one bench case: make profile CASE=3 (writes target/profile/).
CASE ?= 1
profile: deps
	bash bench/profile.sh $(CASE)

# Ten minutes of mixed traffic, rule changes and origin restarts (SOAK_SECONDS, default 600).
soak: deps
	bash soak/run.sh

clean:
	$(CARGO) clean
