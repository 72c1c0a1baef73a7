# Char-RNN TFX. `make run` trains, pushes, serves and generates; `make test` tests.
# Every target installs the environment first if it is missing.

PYTHON_BOOTSTRAP ?= python3.10
VENV   := .venv
PY     := $(VENV)/bin/python
CORPUS ?= $(CURDIR)/data/tinyshakespeare.txt
PRESET ?= cpu
OVERRIDES ?= $(CHAR_RNN_OVERRIDES)
OUTPUT_DIR ?= $(CURDIR)/outputs
GRPC_PORT ?= 8500
REST_PORT ?= 8501
PROMPT ?= ROMEO:
NUM_CHARS ?= 500
PYTEST_ARGS ?=
IMAGE ?= char-rnn-tfx:0.1.0
KFP_HOST ?= http://localhost:8080
KFP_SPEC ?= $(OUTPUT_DIR)/kubeflow/char-rnn.yaml
# Where the Beam steps (CorpusIngest, WindowGen) run: direct (this process, the
# default) or dask (a dask.distributed cluster: DASK_WORKERS worker processes on
# 127.0.0.1 started and stopped around the run, or an existing scheduler at
# DASK_ADDRESS=tcp://HOST:PORT). E.g. `make run BEAM=dask DASK_WORKERS=4`.
BEAM ?= direct
DASK_WORKERS ?= 2
DASK_ADDRESS ?=

export CHAR_RNN_CORPUS := $(CORPUS)
export CHAR_RNN_PRESET := $(PRESET)
export CHAR_RNN_OVERRIDES := $(OVERRIDES)
export CHAR_RNN_OUTPUT_DIR := $(OUTPUT_DIR)
export PYTHONWARNINGS := ignore
export TF_CPP_MIN_LOG_LEVEL := 1

SERVING_BASE := $(OUTPUT_DIR)/serving_model/char_rnn

ifeq ($(BEAM),dask)
ON_BEAM := $(PY) -m pipeline.dask_cluster --workers=$(DASK_WORKERS) $(if $(DASK_ADDRESS),--address=$(DASK_ADDRESS)) --
else ifneq ($(BEAM),direct)
$(error BEAM=$(BEAM): use BEAM=direct or BEAM=dask (other runners: CHAR_RNN_BEAM_ARGS, see README))
endif

.PHONY: install run pipeline serve generate test image kubeflow-compile kubeflow-schedule lock clean \
	status rollback rollforward tensorboard

$(VENV)/.installed: requirements.lock setup.py .python-version
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

## The main job: train (PRESET, default cpu) -> gate -> push -> serve -> generate.
run: install
	$(ON_BEAM) $(PY) -m pipeline.local_runner
	bash scripts/serve_and_generate.sh "$(SERVING_BASE)" "$(PROMPT)" $(NUM_CHARS)
	@echo "Run report: $$($(PY) -m pipeline.report --path)"

## Only the pipeline (what `tfx run create --engine=local` runs).
pipeline: install
	$(ON_BEAM) $(PY) -m pipeline.local_runner

## A TF-Serving-compatible server over the pushed versions (gRPC 8500, REST 8501).
serve: install
	$(PY) -m serving.server --port=$(GRPC_PORT) --rest_api_port=$(REST_PORT) \
	  --model_name=char_rnn --model_base_path=$(SERVING_BASE)

## Every run (ML Metadata + the serving dir): corpus, preset, eval loss, gate, pushed, served.
status: install
	$(PY) -m pipeline.status

## Serve an earlier blessed version: newer versions move aside (recorded, reversible).
rollback: install
	@test -n "$(VERSION)" || { echo "usage: make rollback VERSION=<version> (make status lists them)"; exit 2; }
	$(PY) -m pipeline.rollback --version=$(VERSION)

## Undo the last rollback: the versions moved aside come back.
rollforward: install
	$(PY) -m pipeline.rollback --undo

## TensorBoard on the newest run's training logs (RUN=<run id> for another).
TB_PORT ?= 6006
tensorboard: install
	$(PY) -m pipeline.tensorboard_logs --port=$(TB_PORT) $(if $(RUN),--run-id=$(RUN))

## Ask a running server (make serve) for text.
generate: install
	$(PY) -m serving.cli generate --target=localhost:$(GRPC_PORT) \
	  --prompt="$(PROMPT)" --num-chars=$(NUM_CHARS)

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

## The pipeline image every Kubeflow task runs (needs a Docker engine).
image:
	docker build -t $(IMAGE) .

## Compile the same pipeline to a KFP v2 PipelineSpec.
kubeflow-compile: install
	$(PY) -m pipeline.kubeflow_runner --image=$(IMAGE) --output=$(KFP_SPEC)

## Upload it as a new pipeline version and (re)create the cron recurring run.
kubeflow-schedule: kubeflow-compile
	$(PY) -m pipeline.schedule --host=$(KFP_HOST) --pipeline-spec=$(KFP_SPEC)

## Re-resolve requirements.in into requirements.lock (needs network to PyPI).
lock:
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile requirements.in --python-version 3.10 \
	  --python-platform x86_64-manylinux_2_28 -o requirements.lock

clean:
	rm -rf $(OUTPUT_DIR)
