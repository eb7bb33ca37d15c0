# ragd — the two commands of the README are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: setup setup-test build image demo test lint bench eval chart-check chart-rehearsal fresh-check

## What the demo needs (idempotent; `scripts/setup --help` lists the sets).
setup:
	scripts/setup

## What the tests need: the demo's set plus etcd, grpcurl, NVRTC, mpnet, llama.cpp's server, PDFs.
setup-test:
	scripts/setup --with-test

build:
	$(CARGO) build --release -p ragd

## Container images (deploy/README.md): ragd (release binary) and the fat variant with models.
image: setup
	scripts/build-image
	scripts/build-image --fat

## Set up, build and run the demo: embedder (embed, compare) then indexer (ingest capitals, search).
demo: setup
	$(CARGO) build --release -p ragd
	scripts/demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p ragd-exact -p ragd-bench --all-targets --features ragd-exact/cuda,ragd-bench/cuda -- -D warnings

## Set up, lint and run every test (unit, in-process gRPC, multi-process).
test: setup-test lint
	$(CARGO) build -p ragd -p ragd-bench --bins
	$(CARGO) test --workspace
	# The container cluster test (#[ignore]d above: it needs root and podman) on its own.
	@if [ "$${RAGD_CONTAINER_TESTS:-1}" = 0 ]; then \
	  echo "SKIPPED: the container cluster test (tests/tests/it/containers.rs): RAGD_CONTAINER_TESTS=0"; \
	else \
	  $(CARGO) test --workspace --test it -- --ignored containers:: ; \
	fi
	# ragd-exact's CUDA kernels: NVRTC (from PyPI, no GPU needed) must compile them; the GPU
	# search tests run where a GPU is and otherwise check the clean error.
	# The GPU search test is #[ignore]d (the harness counts it as ignored) unless nvidia-smi finds a GPU.
	if nvidia-smi -L >/dev/null 2>&1; then \
	  LD_LIBRARY_PATH=$${RAGD_HOME:-$(CURDIR)/.ragd}/lib/cuda RAGD_REQUIRE_NVRTC=1 RAGD_REQUIRE_GPU=1 $(CARGO) test -p ragd-exact --features cuda -- --include-ignored; \
	else \
	  LD_LIBRARY_PATH=$${RAGD_HOME:-$(CURDIR)/.ragd}/lib/cuda RAGD_REQUIRE_NVRTC=1 $(CARGO) test -p ragd-exact --features cuda && \
	  echo "SKIPPED: ragd-exact's GPU search test (services/exact/tests/gpu.rs): no GPU here (nvidia-smi finds none)"; \
	fi
	scripts/chart-check

## Benchmarks; they write their figures to docs/benchmarks.md (faiss-cpu baseline via --with-bench).
bench:
	scripts/setup --with-bench
	$(CARGO) bench -p ragd-bench --bench embedder
	$(CARGO) bench -p ragd-bench --bench indexer
	$(CARGO) bench -p ragd-bench --bench exact
	$(CARGO) bench -p ragd-bench --bench generator
	$(CARGO) bench -p ragd-bench --bench durability
	$(CARGO) bench -p ragd-bench --bench security
	$(CARGO) bench -p ragd-bench --bench retrieval
	$(CARGO) bench -p ragd-bench --bench upsert
	$(CARGO) bench -p ragd-bench --bench embedder_int8

## Retrieval and embedding quality (`ragd eval`): STS on the Lee corpus, every retrieval mode on
## the State of the Union inverse-cloze set, both models; written to docs/benchmarks.md.
eval:
	scripts/setup --with-bench
	$(CARGO) build --release -p ragd
	scripts/eval-report

## The Helm chart offline: helm lint, helm template of helm/ragd/ci/*, kubernetes-validate for
## Kubernetes 1.30 and 1.33, chart tests (the rendered args through the debug ragd binary).
chart-check: setup-test
	$(CARGO) build -p ragd
	scripts/chart-check

## The chart on the container engine: podman kube play of the embedder and generator Deployments
## rendered from helm/ragd/ci/rehearsal-values.yaml, their probes run in the pods, everything
## removed afterwards (docs/operations.md, "Chart rehearsal"; ~70 s once the images are built).
chart-rehearsal: setup-test image
	scripts/build-image --no-ragd --etcd
	scripts/chart-rehearsal

## Fresh-machine rehearsal: a clean Debian bookworm container (podman) with only what the machine
## image guarantees clones this repository and runs `make demo` then `make test`, timing each.
fresh-check:
	scripts/fresh-check
