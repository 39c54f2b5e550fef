# syntax=docker/dockerfile:1
# Kanari's one image, for the operator (`python -m kanari.controller`, the default command), the drift
# monitor (`kanari drift monitor`) and the alert receiver (`kanari drift receiver`). The chart sets the
# command per component.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

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
    MPLCONFIGDIR=/tmp/matplotlib
# A numeric user, so that Kubernetes can verify runAsNonRoot without a passwd entry.
USER 65532:65532
EXPOSE 8080 9090
CMD ["python", "-m", "kanari.controller"]
