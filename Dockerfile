# The operator image; the size-aware router runs from it too (`melange-router`, as the operator's
# router Deployments do). Build from the checkout: docker build -t melange-operator:0.1.0 .
# Runtime dependencies come pinned from constraints.txt; the final stage has no compiler, no pip
# cache and no source tree, and runs as the numeric user 10001.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY solver/ solver/
COPY operator/ operator/
COPY crds/ crds/
COPY testing/ testing/
COPY demo/ demo/
# One wheel for the project and one for each pinned dependency (binary wheels: no compiler needed).
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint constraints.txt --only-binary=:all: \
        --no-binary=melange-operator .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Installs only the wheels built above, offline, then adds the user the image runs as.
# DL3013 (pin versions in pip) does not apply: the one package named is the wheel built above from
# this checkout, and every dependency's version comes from constraints.txt.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels melange-operator \
    && groupadd --gid 10001 melange \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin melange
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["melange-operator"]
CMD ["--all-namespaces", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
