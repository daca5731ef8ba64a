# The worker image: `docker build -t workers .`. Every process type of the Procfile runs from
# it (`workers run NAME ...`, `workers migrate`, `workers topics create`).
# `./dev.sh image` builds it here without a registry: a base made from Debian packages and a
# local wheelhouse, offline (docs/deploying.md, The image, built here).
#
# - multi-stage: the build stage installs the package into a virtualenv; the final stage only
#   copies that virtualenv (no pip run, no compilers: every dependency ships binary wheels);
# - every package, the build backend and pip itself at its version in constraints.txt (the
#   lock, refreshed by `./dev.sh lock`), as dev.sh installs the development virtualenv;
# - runs as the numeric non-root user 10001 (Kubernetes' runAsNonRoot can verify it);
# - works with a read-only root filesystem: nothing writes outside /tmp (mount an emptyDir
#   there): the healthcheck file, WORKERS_STATE_DIR and, with `--processes N`, the
#   prometheus-client multiprocess directory (under WORKERS_STATE_DIR unless
#   PROMETHEUS_MULTIPROC_DIR is set). No .pyc files are written at run time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# pip installs from PyPI, unless the build passes PIP_NO_INDEX=1 and PIP_FIND_LINKS=DIR: then
# from a local wheelhouse only (`./dev.sh image` mounts one at /mnt).
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY workers ./workers
# The locked pip (it knows --build-constraint: pip >= 25.3) and setuptools (the venv's own is
# old) first. Byte-compile at build time: the root filesystem is read-only at run time.
RUN pip install --no-compile -c constraints.txt pip setuptools \
    && pip install --no-compile -c constraints.txt --build-constraint constraints.txt . \
    && python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    WORKERS_STATE_DIR=/tmp/workers \
    WORKERS_LOG_FORMAT=json
RUN groupadd --system --gid 10001 workers \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin workers
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
# Metrics ports of the Procfile's process types.
EXPOSE 9101 9102
CMD ["workers", "run", "--list"]
