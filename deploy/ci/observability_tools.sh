#!/bin/sh
# Installs what the Prometheus-rule and Grafana-dashboard tests need (tests/deploy/test_prometheus.py,
# tests/deploy/test_grafana.py, tests/deploy/test_live_metrics.py) on a fresh Debian machine, as root.
# Idempotent: what is there is kept.
#
#   promtool                 Debian's prometheus package (2.42): `promtool check rules`, `promtool test rules`;
#                            its server runs the live scrape test (tests/deploy/test_live_metrics.py)
#   ip netns                 iproute2: that test runs Prometheus and `turnout serve` in a namespace with only lo
#   grafana-foundation-sdk   the build for Grafana 11.6 (a plain install picks an older epoch with 10.1 types)
#   jsonschema               the dashboard against ../shared/data/grafana-schemas/v11.6
set -eu
. "$(dirname "$0")/apt_quiet_install.sh"

GRAFANA_SDK="grafana-foundation-sdk==1769699379!11.6.0"
PYTHON="${PYTHON:-python}"

if ! command -v promtool >/dev/null 2>&1; then
    apt_quiet_install prometheus
fi
promtool --version | head -n 1
if ! command -v ip >/dev/null 2>&1; then
    apt_quiet_install iproute2
fi

# pip skips both when the pinned versions are installed already.
"$PYTHON" -m pip install --quiet --root-user-action=ignore "$GRAFANA_SDK" "jsonschema>=4.18"
"$PYTHON" -c "import grafana_foundation_sdk, jsonschema; print('grafana-foundation-sdk and jsonschema importable')"
