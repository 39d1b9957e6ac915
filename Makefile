# One command per job; .ci/run calls the same targets a person does.
CARGO ?= cargo

.PHONY: demo test bench bench-socat lint haproxy fuzz

haproxy:
	@scripts/ensure-haproxy.sh

## Sandbox HAProxy on loopback, abusive and normal traffic, block and release through the Runtime API.
demo: haproxy
	$(CARGO) run --release -- demo

## Unit tests (captured HAProxy answers) and integration tests (a real haproxy, real HTTP).
test: haproxy
	$(CARGO) test

## Every bench of docs/BENCHMARKS.md: the CLI against socat on a real 1,048,576-entry table, the
## parser, the daemon's poll and actuation against socat, fleet fan-out, the end-to-end scale run.
bench: bench-socat
	$(CARGO) bench --bench table_parser
	$(CARGO) bench --bench poll_1m
	$(CARGO) bench --bench actuate_100k
	$(CARGO) bench --bench fleet_fanout
	$(CARGO) bench --bench scale

bench-socat:
	@scripts/ensure-haproxy.sh --socat
	scripts/bench-table-vs-socat.sh

## Mutation fuzzing of every parser and loader (stable Rust); `make test` runs 2 s per target.
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} $(CARGO) test --release --test fuzz -- --nocapture

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
