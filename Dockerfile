# reelq's container image: `docker build -t reelq .` then `docker run -p 8000:8000 -v reelq:/data reelq`.
#
# Build arguments (docs/deploy.md):
#   BASE_IMAGE       an image with Python >= 3.11 and its venv module [python:3.11-slim-bookworm];
#                    for GPUs e.g. nvidia/cuda:12.6.3-runtime-ubuntu24.04 with SYSTEM_PACKAGES below
#   EXTRAS           reelq's extras: "" (embedded), "scale" (PostgreSQL, RabbitMQ/Redis, S3), "diffusers",
#                    or several: "scale,diffusers"
#   SYSTEM_PACKAGES  Debian/Ubuntu packages to add first, e.g. "python3 python3-venv" on a bare base
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL   where pip looks (a CPU build of torch, a mirror)
# Wheels already made (`pip wheel . -w wheelhouse`) in ./wheelhouse are installed without any index:
# a build that cannot reach one (scripts/test-image) needs nothing else.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- build: every wheel, installed into a virtual environment ------------------------------------
FROM ${BASE_IMAGE} AS build
ARG SYSTEM_PACKAGES=""
ARG EXTRAS=""
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
RUN if [ -n "$SYSTEM_PACKAGES" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $SYSTEM_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# `COPY wheelhouse*` copies nothing when there is none (the directory's own name must match once).
COPY .dockerignore wheelhouse* ./wheelhouse/
RUN python3 -m venv /opt/reelq \
    && if ls wheelhouse/*.whl >/dev/null 2>&1; then \
         /opt/reelq/bin/pip install --no-index --find-links wheelhouse "reelq${EXTRAS:+[$EXTRAS]}"; \
       else \
         /opt/reelq/bin/pip install ".${EXTRAS:+[$EXTRAS]}"; \
       fi \
    && /opt/reelq/bin/reelq --version

# --- runtime: the environment, a non-root user, nothing to build with ----------------------------
FROM ${BASE_IMAGE}
ARG SYSTEM_PACKAGES=""
RUN if [ -n "$SYSTEM_PACKAGES" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $SYSTEM_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home reelq \
    && mkdir -p /data && chown reelq:reelq /data
COPY --from=build /opt/reelq /opt/reelq
ENV PATH=/opt/reelq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    REELQ_HOME=/data \
    REELQ_LOG_FORMAT=json
USER reelq
VOLUME ["/data"]
EXPOSE 8000
# Ready = database, storage and disk answer (and, on a diffusers node, its models are loaded).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
ENTRYPOINT ["reelq"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
