# syntax=docker/dockerfile:1
# The operator image: the one console script, `llm-operator`, for every role.
#   docker build -t llm-operator:0.1.0 .
#   docker run --rm llm-operator:0.1.0 agent --help
# Member clusters run `agent` (Helm chart), the hub runs `planner` and `migrate` (chart or docker-compose.yml).
# Needs BuildKit (the default builder of Docker 23+).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: wheels of the operator and of every dependency (nothing is compiled in the runtime image) --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# The packages listed in pyproject.toml [tool.setuptools.packages.find] (tests/unit/test_compose.py checks this).
COPY pyproject.toml README.md* ./
COPY llm_operator/ llm_operator/
COPY api/ api/
COPY bus/ bus/
COPY store/ store/
COPY watcher/ watcher/
COPY planner/ planner/
COPY applier/ applier/
COPY kubeapi/ kubeapi/
COPY migrations/ migrations/
COPY dashboard/ dashboard/
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: the slim Python image, the installed wheels, and a non-root user --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels llm-operator \
    && groupadd --system --gid 10001 llmop \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/llmop --create-home \
       --shell /usr/sbin/nologin llmop
LABEL org.opencontainers.image.title="llm-operator" \
      org.opencontainers.image.description="Event-sourced multi-cluster Kubernetes operator for LLMs" \
      org.opencontainers.image.licenses="Apache-2.0"
# Numeric, so that Kubernetes can verify runAsNonRoot; the Helm chart runs pods as this UID.
USER 10001:10001
WORKDIR /home/llmop
ENTRYPOINT ["llm-operator"]
CMD ["--help"]
