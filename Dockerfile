# An image with the kf2v plugin installed (not editable), for Docker and Kubernetes work
# pools: flow runs import the flows by module (kf2v_flows.batch:generate_batch), so the
# image needs the installed package and nothing else of the repository.
#
#   docker build -t kf2v-tasks:0.1.0 .
#   docker run --rm kf2v-tasks:0.1.0 python -c "import kf2v_flows.batch"
#
# deployments/prefect.yaml has a commented Docker work-pool deployment that uses it.

# Build the wheel in a throwaway stage, so the image holds no source tree.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kf2v_tasks ./kf2v_tasks
COPY flows ./flows
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /tmp/wheels
RUN pip install /tmp/wheels/*.whl && rm -rf /tmp/wheels

# Flow runs do not need root; PREFECT_HOME defaults to the user's ~/.prefect.
RUN useradd --create-home --uid 10001 kf2v
USER kf2v
WORKDIR /home/kf2v
CMD ["prefect", "version"]
