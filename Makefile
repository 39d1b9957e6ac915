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

## Criterion benches, then the side-by-side run against socat on a real 1,048,576-entry table.
bench: bench-socat
	$(CARGO) bench --bench table_parser
	$(CARGO) bench --bench fleet_fanout

bench-socat:
	@scripts/ensure-haproxy.sh --socat
	scripts/bench-table-vs-socat.sh

## Mutation fuzzing of every parser and loader (stable Rust); `make test` runs 2 s per target.
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} $(CARGO) test --release --test fuzz -- --nocapture

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
