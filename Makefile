# Two commands for a newcomer on Debian/Ubuntu:
#   make demo   runs the demo service (http://127.0.0.1:3000/visits)
#   make test   runs every test: unit, integration (real redis-server), doc tests, all features
# Each installs what it needs first.

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: demo test lint bench deps

deps:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server from the system packages"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }
	@command -v $(CARGO) >/dev/null 2>&1 || { \
		echo "installing the Rust toolchain with rustup"; \
		$(SUDO) apt-get install -y -qq curl build-essential && \
		curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; }

demo: deps
	$(CARGO) run --all-features --example server

test: deps
	$(CARGO) test --all-features

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --all-features

bench: deps
	$(CARGO) bench --all-features
