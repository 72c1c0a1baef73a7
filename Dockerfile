# The Char-RNN TFX pipeline image: every Kubeflow Pipelines task runs in it
# (`python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor
#  --executor_class_path components.<...>`; see pipeline/kubeflow_runner.py).
#
#   docker build -t "$CHAR_RNN_IMAGE" . && docker push "$CHAR_RNN_IMAGE"
#
# Base: python:3.10.13-slim-bookworm plus requirements.lock, not tensorflow/tfx:1.16.0.
# The lock is the exact set CI tests (Python 3.10.13 as in .python-version, TF
# 2.16.2, Beam 2.59.0, kfp 2.5.0); the TFX image brings its own, different pins
# (and some 10 GB), so installing the lock over it with --no-deps would give a
# mixture nobody tested. Slim + lock reproduces the tested environment exactly.
# The tag is pinned; pin the digest too (python@sha256:...) where builds must
# be bit-for-bit reproducible.
FROM python:3.10.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    MALLOC_ARENA_MAX=2

WORKDIR /opt/char-rnn-tfx

# Dependencies first, in their own layer: exactly the lock, no resolver run.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock

# The project itself, installed (not editable): executors, the trainer's run_fn
# (components.trainer_module.run_fn) and the artifact classes import from
# site-packages, whatever the working directory of the task. `charrnn` is what
# the entrypoint imports to rebuild Corpus/Vocabulary artifacts (their type
# names, charrnn.Corpus and charrnn.Vocabulary, are the spec's schema titles).
COPY setup.py ./
COPY charrnn ./charrnn
COPY components ./components
COPY pipeline ./pipeline
COPY serving ./serving
RUN pip install --no-deps --no-build-isolation . \
    && python -c "import charrnn, components.trainer_module, pipeline.pipeline"

# KFP runs tasks as a user of its choosing; the image does not need root.
RUN useradd --create-home --uid 1000 pipeline
USER 1000
WORKDIR /home/pipeline

# KFP gives each task its own command (the same module below), so this only
# matters for `docker run IMAGE --executor_class_path ... --json_serialized_invocation_args ...`.
ENTRYPOINT ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
