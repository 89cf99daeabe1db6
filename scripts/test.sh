#!/usr/bin/env bash
# The one lint/type/test entry point (README "Run the tests"; .ci/run calls exactly this).
# Installs what the tests need (Mosquitto, NATS, InfluxDB 1.x, VictoriaMetrics, the Python env);
# the tests start and stop their own service instances on free 127.0.0.1 ports.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
cd "$gw_root"
gw_apt_install mosquitto mosquitto-clients nats-server influxdb victoria-metrics postgresql chromium
gw_venv dev
export PATH="$gw_root/.venv/bin:$PATH"
echo "== ruff" && ruff check .
echo "== mypy --strict" && mypy
echo "== import layers" && lint-imports
echo "== pytest" && pytest -q "$@"
