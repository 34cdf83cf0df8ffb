# blockrepl: build, test, run and benchmark.
#   make deps         install the Debian packages the tests and benchmarks use (tools/install-deps.sh)
#   make build        dotnet restore + build (Release)
#   make test         deps + build, then run every test with per-test output
#   make run          deps + build, then start a local primary/secondary pair (tools/run-local.sh)
#   make bench        deps + build, then the NBD end-to-end benchmark vs qemu-nbd and nbdkit
#   make bench-repl   deps + build, then the replication benchmark vs qemu-storage-daemon mirrors
#   make bench-al     deps + build, then pairs with the activity log on vs off (bench/results/al-bench-latest.md)
#   make bench-resync deps + build, then resync speed and the latency of application writes during a resync
#   make bench-iscsi  deps + build, then the iSCSI benchmark vs tgt (installs Debian's tgt if missing)
#   make bench-micro  BenchmarkDotNet micro-benchmarks (bench/BlockRepl.Benchmarks)
#   make clean        remove build outputs

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

export DOTNET_CLI_TELEMETRY_OPTOUT := 1
export DOTNET_NOLOGO := 1
export DOTNET_SKIP_FIRST_TIME_EXPERIENCE := 1

DOTNET        ?= dotnet
CONFIGURATION ?= Release
SLN           ?= BlockRepl.sln
MICRO_PROJECT ?= bench/BlockRepl.Benchmarks
# Extra arguments, e.g. make test TEST_ARGS='--filter FullyQualifiedName~Nbd'
TEST_ARGS     ?=
# Extra BenchmarkDotNet arguments, e.g. make bench-micro MICRO_ARGS='--job short'
MICRO_FILTER  ?= *
MICRO_ARGS    ?=

.PHONY: deps build test run bench bench-repl bench-al bench-resync bench-iscsi bench-micro clean

deps:
	bash tools/install-deps.sh

build:
	$(DOTNET) restore $(SLN)
	$(DOTNET) build $(SLN) -c $(CONFIGURATION) --no-restore

test: deps build
	$(DOTNET) test $(SLN) -c $(CONFIGURATION) --no-build --logger "console;verbosity=normal" $(TEST_ARGS)

run: deps build
	bash tools/run-local.sh

bench: deps build
	bash bench/nbd-bench.sh

bench-repl: deps build
	bash bench/repl-bench.sh

bench-al: deps build
	bash bench/al-bench.sh

bench-resync: deps build
	bash bench/resync-bench.sh

bench-iscsi: deps build
	bash bench/iscsi-bench.sh

bench-micro: deps
	$(DOTNET) run -c $(CONFIGURATION) --project $(MICRO_PROJECT) -- --filter '$(MICRO_FILTER)' $(MICRO_ARGS)

clean:
	-$(DOTNET) clean $(SLN) -c $(CONFIGURATION) >/dev/null 2>&1
	find src tests bench -type d \( -name bin -o -name obj \) -prune -exec rm -rf {} +
	rm -rf BenchmarkDotNet.Artifacts $(MICRO_PROJECT)/BenchmarkDotNet.Artifacts TestResults
