#!/usr/bin/env bash
# The main job (README "Run the hub"): local Mosquitto + InfluxDB on 127.0.0.1, the hub,
# and demo device traffic, on embedded defaults. Ctrl-C stops the hub and the stack.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
cd "$gw_root"
gw_apt_install mosquitto mosquitto-clients influxdb
gw_venv
gridwatch="$gw_root/.venv/bin/gridwatch"
"$gridwatch" stack up
trap '"$gridwatch" stack down' EXIT
"$gridwatch" run --demo "$@"
