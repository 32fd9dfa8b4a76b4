# Bastion: the gateway and the management API in one process (`bastion serve`).
#
#   docker build -t bastion .
#   docker run -p 8000:8000 -v bastion-data:/data bastion
#
# Embedded by default (SQLite + signing keys under the /data volume, in-process counters: one
# worker). For production set BASTION_DATABASE_URL (PostgreSQL) and BASTION_REDIS_URL; see
# docs/configuration.md and docs/operations.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user with a fixed uid/gid (so volume permissions are predictable).
RUN groupadd --system --gid 10001 bastion \
 && useradd --system --uid 10001 --gid bastion --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin bastion

WORKDIR /src
# Dependencies first (a layer that survives code changes), from the lock files: exact versions,
# every sha256 checked (requirements/run.txt: what serving needs; build.txt: the build backend).
COPY requirements ./requirements
RUN pip install --require-hashes --no-deps -r requirements/build.txt \
 && pip install --require-hashes --no-deps -r requirements/run.txt
# Then the code, installed without its (already locked) dependencies and without build
# isolation, so nothing unpinned is downloaded: the same install `make test` checks (a wheel,
# not --editable).
COPY pyproject.toml README.md ./
COPY core ./core
COPY httpkit ./httpkit
COPY store ./store
COPY policies ./policies
COPY audit ./audit
COPY services ./services
COPY gateway ./gateway
COPY api ./api
COPY console ./console
COPY bastion ./bastion
RUN pip install --no-deps --no-build-isolation . \
 && pip check \
 && cd / && rm -rf /src \
 && mkdir -p /data && chown bastion:bastion /data && chmod 0700 /data

ENV BASTION_HOST=0.0.0.0 \
    BASTION_PORT=8000 \
    BASTION_DATA_DIR=/data

VOLUME ["/data"]
WORKDIR /data
USER bastion:bastion
EXPOSE 8000

# Liveness: /healthz answers 200 while the process serves. (Readiness, /readyz, also checks
# the database and Redis; use it for a load balancer or an orchestrator's readiness probe.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; r = u.urlopen('http://127.0.0.1:' + os.environ.get('BASTION_PORT', '8000') + '/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

# Applies migrations, runs the BASTION_BOOTSTRAP_* first-run set-up if configured, then serves.
CMD ["bastion", "serve"]
