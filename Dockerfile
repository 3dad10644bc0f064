# syntax=docker/dockerfile:1
# The tokenyard operator and autoscaler image: `tokenyard operator` (default) and
# `tokenyard autoscaler`. Control plane only: no Ray, no vLLM (those live in the Ray
# image, Dockerfile.ray). Build with `make image` or `docker build -t tokenyard:dev .`
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: turn the source tree into a wheel ----------------------------------
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
RUN pip install --no-cache-dir "build>=1.2"
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m build --wheel --outdir /dist .

# --- runtime: the wheel and its base dependencies, nothing else ------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tokenyard" \
      org.opencontainers.image.description="tokenyard operator and autoscaler" \
      org.opencontainers.image.licenses="Apache-2.0"
# No .pyc files: the chart runs the container with a read-only root filesystem.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheel is bind-mounted from the builder, so it never lands in a layer; pip and
# setuptools go afterwards, leaving no way to build or install anything at runtime.
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir /dist/tokenyard-*.whl \
    && pip uninstall -y --no-cache-dir setuptools wheel pip \
    && tokenyard version
# A numeric uid, so the kubelet can check runAsNonRoot; matches the chart's runAsUser.
USER 10001:10001
WORKDIR /tmp
# kopf's liveness/readiness endpoint (/healthz).
EXPOSE 8080
ENTRYPOINT ["tokenyard"]
CMD ["operator"]
