# syntax=docker/dockerfile:1
# Kanari's one image, for the operator (`python -m kanari.controller`, the default command), the drift
# monitor (`kanari drift monitor`) and the alert receiver (`kanari drift receiver`). The chart sets the
# command per component.
# `--target pipeline` builds the training pipeline's component image instead (see that stage).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# CPU-only torch for the pipeline steps (evaluation and the gate load the model); the training itself runs
# in SageMaker's PyTorch Neuron image. From PyTorch's CPU wheel index: the PyPI wheel bundles CUDA (~2 GB).
ARG TORCH_VERSION=2.8.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The drift baseline's Spark job image is built on SageMaker's PySpark processing container (see that stage).
ARG SPARK_PROCESSING_IMAGE=173754725891.dkr.ecr.us-east-1.amazonaws.com/sagemaker-spark-processing:3.5-cpu-py312-v1.0

# ------------------------------------------------------------------ pipeline components (KFP v2 steps)
# Every step of kfp_pipelines runs on this image (`kanari pipeline compile --image <this image>`): kfp,
# boto3, pandas, scikit-learn, torch CPU and the kanari/kfp_pipelines packages, so no step installs
# anything at run time.
FROM ${PYTHON_IMAGE} AS pipeline-build
ARG TORCH_VERSION
ARG TORCH_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kanari
RUN /opt/kanari/bin/pip install --index-url ${TORCH_INDEX} "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operators ./operators
COPY kfp_pipelines ./kfp_pipelines
RUN /opt/kanari/bin/pip install ".[pipeline]" \
 && /opt/kanari/bin/python -c "import torch, kfp, kfp_pipelines.evaluation, kfp_pipelines.training.mlp" \
 && /opt/kanari/bin/python -m compileall -q /opt/kanari/lib

FROM ${PYTHON_IMAGE} AS pipeline
LABEL org.opencontainers.image.title="kanari-pipelines" \
      org.opencontainers.image.description="Kanari training pipeline components (KFP v2)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=pipeline-build /opt/kanari /opt/kanari
# KFP's launcher runs the step as this image's user; HOME must be writable (kfp writes executor files).
ENV PATH=/opt/kanari/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba-cache
USER 65532:65532

# --------------------------------------------------------------- the drift baseline's Spark job image
# `--target spark-baseline`: the pipeline's baseline step with baseline_engine=spark runs this image as a
# SageMaker Processing job (kfp_pipelines/sagemaker/processing.py). It is SageMaker's own PySpark processing
# container (Spark 3.5, Python 3.12, Amazon Linux 2023; the account is per region, see
# github.com/aws/sagemaker-spark-container available_images.md) with Kanari installed into its Python, whose
# Spark (EMR's, with EMRFS for s3://) the job uses: pyspark is not installed from PyPI. smspark-submit runs
# /opt/kanari/spark_job.py = `kanari drift baseline --engine spark` with the job's arguments.
FROM ${SPARK_PROCESSING_IMAGE} AS spark-baseline
COPY pyproject.toml README.md /tmp/kanari-src/
COPY operators /tmp/kanari-src/operators
RUN /usr/local/bin/python3 -m pip install --no-cache-dir /tmp/kanari-src \
 && mkdir -p /opt/kanari && cp /tmp/kanari-src/operators/kanari/drift/spark_job.py /opt/kanari/spark_job.py \
 && rm -rf /tmp/kanari-src \
 && /usr/local/bin/python3 -c "import kanari.drift.spark_baseline, numba, pyarrow"
ENV NUMBA_CACHE_DIR=/tmp/numba-cache
ENTRYPOINT ["smspark-submit"]

# ------------------------------------------------------------------------------- operator (default)

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kanari
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operators ./operators
# The core dependencies only: no pipeline (the KFP SDK, scikit-learn), cli (pyarrow, matplotlib), demo, dev,
# serve or train extras, and neither the pipeline package nor the demo's stand-ins (tests/house checks).
RUN /opt/kanari/bin/pip install . \
 && /opt/kanari/bin/python -m compileall -q /opt/kanari/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kanari" \
      org.opencontainers.image.description="Kanari operator, drift monitor and alert receiver" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kanari /opt/kanari
# The root filesystem is read-only in the cluster: everything that writes goes to /tmp (an emptyDir).
ENV PATH=/opt/kanari/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba-cache
# A numeric user, so that Kubernetes can verify runAsNonRoot without a passwd entry.
USER 65532:65532
EXPOSE 8080 9090
CMD ["python", "-m", "kanari.controller"]
