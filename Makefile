# AIA security platform. `make run` starts the stack, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/aia
REDIS_URL ?= redis://127.0.0.1:6379
export DATABASE_URL REDIS_URL

.PHONY: help run build release test lint fmt services clean-test-dbs bench bench-gateway check-deploy deploy-tools attack-tools fuzz chaos

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

build: ## Build every binary (debug)
	cargo build --workspace --bins

release: ## Build every binary optimised (the Dockerfile runs exactly this)
	cargo build --release --locked --workspace --bins

run: build ## Create and migrate the database, start all four services (Ctrl-C stops them)
	bash scripts/run.sh

services: ## Make sure Postgres and Redis answer (start them if installed and stopped)
	bash scripts/services.sh

test: services deploy-tools attack-tools ## Run the whole test suite against real Postgres and Redis
	cargo test --workspace --doc --quiet
	cargo nextest run --workspace --no-fail-fast

deploy-tools: ## Install what the deployment checks need (kubectl, kubernetes-validate in target/)
	bash scripts/deploy-tools.sh

attack-tools: ## Install the outside attack tools the hostile-input tests run (PyJWT, schemathesis in target/)
	bash scripts/attack-tools.sh

check-deploy: deploy-tools ## Only the deployment checks: Compose, Dockerfile, Kubernetes manifests
	cargo nextest run -p aia-admin --test deploy

lint: ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt --all

fuzz: attack-tools ## Bounded fuzzing: every property test at FUZZ_CASES (default 20000) cases, schemathesis at SCHEMATHESIS_EXAMPLES (200), the JWT attacks
	PROPTEST_CASES=$${FUZZ_CASES:-20000} cargo nextest run -p aia-tokens -p aia-gateway -p aia-auth --no-fail-fast \
	  -E 'test(/properties::|every_refused_body/)'
	SCHEMATHESIS_EXAMPLES=$${SCHEMATHESIS_EXAMPLES:-200} cargo nextest run -p aia-gateway --no-capture -E 'test(schemathesis) | test(outside_jwt)'

bench: ## Benchmarks beside same-run references (gateway vs nginx, logins vs raw argon2, p99 under a login flood, RSS); writes docs/BENCHMARKS.md
	bash scripts/bench.sh

chaos: ## Faults under a steady load (kill -9 each service, Redis emptied, Postgres crashed, audit down a minute): lost records must be 0
	bash scripts/chaos.sh

bench-gateway: ## The gateway against nginx on this machine (release build, wrk): throughput and p99 ratios
	bash scripts/bench-gateway.sh
