# flowtts on Ray: one image for the head and every worker of a KubeRay RayCluster, RayJob or RayService
# (deploy/kuberay/, docs/kubernetes.md).
#
#   docker build -t REGISTRY/flowtts:0.1.0 .                                        # CUDA (default)
#   docker build --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311 -t REGISTRY/flowtts:0.1.0-cpu .
#
# The base is the plain Ray image of cluster.yaml (Ray 2.60.0, Python 3.11; rayproject/ray-ml is no longer
# published). The project is installed as `make` installs it: torch pinned first, then the project with every
# other version fixed by requirements.lock; no dev or test extras, no tests or fixtures (.dockerignore).
# No HEALTHCHECK: KubeRay probes the Ray processes and the manifests probe Serve's /healthz and /readyz.
# CI lints this file (hadolint in `make lint`) but does not build it: there is no container runtime there.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
ARG FLOWTTS_VERSION=0.1.0
LABEL org.opencontainers.image.title="flowtts" \
      org.opencontainers.image.description="Train and serve F5-TTS (flow-matching TTS) on Ray" \
      org.opencontainers.image.version="${FLOWTTS_VERSION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# The Ray image's own non-root user `ray` (uid 1000, group 100 `users`), whose home holds the image's Python.
USER 1000:100
RUN mkdir -p /home/ray/flowtts
WORKDIR /home/ray/flowtts

# torch first, so nothing else picks the torch build; the lock keeps every other version fixed.
COPY --chown=1000:100 requirements.lock ./
RUN pip install --no-cache-dir -c requirements.lock torch==2.11.0 torchaudio==2.11.0

# The packages and the job entry points (RayJob entrypoints run /home/ray/flowtts/jobs/*.py).
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 platform/ platform/
COPY --chown=1000:100 data_pipelines/ data_pipelines/
COPY --chown=1000:100 serve/ serve/
COPY --chown=1000:100 trainer/ trainer/
COPY --chown=1000:100 jobs/ jobs/
# eval-models: the judges of jobs/evaluate.py (--asr-model / --speaker-model)
RUN pip install --no-cache-dir -c requirements.lock ".[eval-models]" && rm -rf build ./*.egg-info

# Ray GCS, dashboard (Ray Jobs API), Serve HTTP
EXPOSE 6379 8265 8000
