# Two commands for a newcomer on Debian/Ubuntu:
#   make demo   runs the demo service (http://127.0.0.1:3000/visits)
#   make test   runs every test: unit, integration (real redis-server), doc tests, all features,
#               the README's quick start built as written, and the end-to-end check of metrics,
#               dashboard and alerts with a real Prometheus
# Each installs what it needs first (system packages need root or sudo).

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: demo test quickstart e2e lint bench chaos stress deps e2e-deps

# RUNLEVEL=1 keeps Debian from starting the packages' system services: the tests start their own.
APT_INSTALL = $(SUDO) env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

deps:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server from the system packages"; \
		$(SUDO) apt-get update -qq && $(APT_INSTALL) redis-server; }
	@command -v $(CARGO) >/dev/null 2>&1 || { \
		echo "installing the Rust toolchain with rustup"; \
		$(SUDO) apt-get install -y -qq curl build-essential && \
		curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; }

demo: deps
	$(CARGO) run --all-features --example server

test: deps
	$(CARGO) test --all-features
	$(MAKE) quickstart
	$(MAKE) e2e

# The README's quick start (its Cargo.toml and main.rs) as a project of its own.
quickstart: deps
	CARGO="$(CARGO)" bash scripts/check-quickstart.sh

e2e-deps:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1 || { \
		echo "installing prometheus and python3 from the system packages"; \
		$(SUDO) apt-get update -qq && $(APT_INSTALL) prometheus python3; }

# The metric contract, the Grafana dashboard and the alert rules against a real Prometheus.
e2e: deps e2e-deps
	promtool check rules grafana/alerts.yml
	$(CARGO) build --all-features --example server
	python3 e2e/prometheus.py

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --all-features

# The resilience tour: faults under steady load, a table per phase and an SVG timeline.
chaos: deps
	$(CARGO) run --release --all-features --example chaos -- target/chaos.svg

# The integration suite N times with both cores kept busy, and each test's failure count.
N ?= 20
stress: deps
	python3 scripts/stress.py $(N)

bench: deps
	$(CARGO) bench --all-features
