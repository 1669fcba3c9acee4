# Sourced by the deploy/ci installers: apt_quiet_install PACKAGE... installs Debian packages without starting
# the services they ship. A server package would otherwise start a daemon right away (Prometheus listening on
# all interfaces, dockerd on /var/run/docker.sock with its bridge and iptables rules); a policy-rc.d that
# answers 101 ("action forbidden") keeps invoke-rc.d from starting it. One already there is put back afterwards.
apt_quiet_install() {
    apt-get update
    policy=/usr/sbin/policy-rc.d
    saved=""
    if [ -e "$policy" ]; then
        saved=$(mktemp)
        cp -p "$policy" "$saved"
    fi
    trap 'if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi' EXIT
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
    if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
    trap - EXIT
}
