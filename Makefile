# One command per job; .ci/run calls the same targets a person does.
CARGO ?= cargo

.PHONY: package test-deps demo test test-integration test-versions bench bench-socat lint haproxy fuzz

# The HAProxy builds beside the repository (3.0.0, 3.4.0, 3.5-dev5; see ../shared/haproxy/README.md).
HAPROXY_BUILDS ?= ../shared/haproxy
HAPROXY_VERSIONS ?= 3.0.0 3.4.0 3.5-dev5

haproxy:
	@scripts/ensure-haproxy.sh

## HAProxy, headless Chromium with chromedriver for the console's browser tests, man,
## systemd-analyze for the unit file, lintian for the package, promtool for the alert rules and
## PostgreSQL's server for the shared store's tests.
test-deps:
	@scripts/ensure-haproxy.sh --browser

## Sandbox HAProxy on loopback, abusive and normal traffic, block and release through the Runtime API.
demo: haproxy
	$(CARGO) run --release -- demo

## Unit tests (captured HAProxy answers) and integration tests (a real haproxy, real HTTP, the
## console in headless Chromium), on $$HAPROXY when set, else Debian's haproxy.
test: test-deps
	$(CARGO) test

## The integration tests on one HAProxy build: make test-integration HAPROXY=/path/to/haproxy
test-integration:
	@test -n "$(HAPROXY)" || { echo "usage: make test-integration HAPROXY=/path/to/haproxy" >&2; exit 2; }
	HAPROXY=$(HAPROXY) scripts/ensure-haproxy.sh --browser
	HAPROXY=$(HAPROXY) $(CARGO) test --test '*'

## The whole suite on Debian's HAProxy (2.6.12), then the integration tests on every build of
## $(HAPROXY_BUILDS): every supported version.
test-versions: test
	for v in $(HAPROXY_VERSIONS); do \
	  echo "== HAProxy $$v"; \
	  HAPROXY=$(abspath $(HAPROXY_BUILDS))/$$v/haproxy $(CARGO) test --test '*' || exit 1; \
	done

## Every bench of docs/BENCHMARKS.md: the CLI against socat on a real 1,048,576-entry table, the
## parser, the daemon's poll and actuation against socat, fleet fan-out, the end-to-end scale run,
## HAProxy's cost per poll (today's way against suspects mode), 1,000 new offenders in one poll,
## and the shared store on PostgreSQL (decisions/s against sled, review, failover).
bench: bench-socat test-deps
	$(CARGO) bench --bench table_parser
	$(CARGO) bench --bench poll_1m
	$(CARGO) bench --bench actuate_100k
	$(CARGO) bench --bench fleet_fanout
	$(CARGO) bench --bench scale
	$(CARGO) bench --bench poll_cost
	$(CARGO) bench --bench burst
	$(CARGO) bench --bench ha

bench-socat:
	@scripts/ensure-haproxy.sh --socat
	scripts/bench-table-vs-socat.sh

## The Debian package (target/debian/stickwarden_VERSION_ARCH.deb), with plain dpkg-deb.
package:
	$(CARGO) build --release
	scripts/package.sh target/release/stickwarden target/debian

## Mutation fuzzing of every parser and loader (stable Rust); `make test` runs 2 s per target.
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} $(CARGO) test --release --test fuzz -- --nocapture

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
