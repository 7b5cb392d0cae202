# syntax=docker/dockerfile:1
# streamer: the `streamer serve` daemon as an image (see docs/operations.md).
#
#   docker build -t streamer:0.1.0 .                                   # CPU torch (default)
#   docker build -t streamer:0.1.0-cu124 --build-arg TORCH_FLAVOUR=cu124 .   # CUDA 12.4 torch
#
# The build downloads only from package registries: Debian's base image and pip (PyPI, plus the PyTorch
# wheel index of the chosen flavour). Only the built-in checkpoint (streamer/builtin/, package data, served
# without STREAMER_MODEL__CHECKPOINT) is baked in: mount a checkpoint directory at /models and set
# STREAMER_MODEL__CHECKPOINT, or bake one in with a derived image (docs/operations.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with torch of the chosen flavour and streamer -------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_FLAVOUR=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/streamer
# torch first and in its own layer: the largest download, reused while the code changes.
RUN case "${TORCH_FLAVOUR}" in \
      cpu|cu124) ;; \
      *) echo "TORCH_FLAVOUR must be cpu or cu124, got '${TORCH_FLAVOUR}'" >&2; exit 1 ;; \
    esac \
 && /opt/streamer/bin/pip install --index-url "https://download.pytorch.org/whl/${TORCH_FLAVOUR}" "torch>=2.2"
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY streamer ./streamer
# torch is already satisfied, so pip keeps the flavour installed above and fetches the rest from PyPI.
RUN /opt/streamer/bin/pip install . \
 && /opt/streamer/bin/python -c "import torch, streamer.cli; print('torch', torch.__version__)"

# ---- runtime: the venv on a clean base, a non-root user, no compilers -------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_FLAVOUR=cpu
LABEL org.opencontainers.image.title="streamer" \
      org.opencontainers.image.description="Stateful LSTM/GRU models over Kafka sensor streams" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.streamer.torch-flavour="${TORCH_FLAVOUR}"
RUN groupadd --system --gid 10001 streamer \
 && useradd --system --uid 10001 --gid streamer --home-dir /var/lib/streamer --create-home \
            --shell /usr/sbin/nologin streamer \
 && mkdir -p /models /var/lib/streamer/state \
 && chown -R streamer:streamer /var/lib/streamer
COPY --from=build /opt/streamer /opt/streamer
ENV PATH=/opt/streamer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMER_LOG_FORMAT=json \
    STREAMER_ENGINE__STATE_DIR=/var/lib/streamer/state
WORKDIR /var/lib/streamer
USER 10001:10001
# Prometheus metrics, /healthz and /readyz (STREAMER_METRICS__PORT).
EXPOSE 9108
# Liveness only (/healthz: the loop is alive); readiness is /readyz, for orchestrators that route traffic.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STREAMER_METRICS__PORT', '9108') + '/healthz', timeout=4)"]
ENTRYPOINT ["streamer"]
CMD ["serve"]
