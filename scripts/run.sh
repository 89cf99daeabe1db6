#!/usr/bin/env bash
# The main job (README "Run the hub"): local Mosquitto + InfluxDB on 127.0.0.1, the hub,
# and demo device traffic, on embedded defaults. Ctrl-C stops the hub and the stack.
# Opt-in: `bash scripts/run.sh --dynsec ...` runs the broker with the dynamic-security
# plugin and logins (`gridwatch stack up --dynsec`); other arguments go to `gridwatch run`.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
cd "$gw_root"
gw_apt_install mosquitto mosquitto-clients influxdb
gw_venv
gridwatch="$gw_root/.venv/bin/gridwatch"
stack_args=()
if [[ "${1:-}" == "--dynsec" ]]; then
    stack_args=(--dynsec)
    shift
fi
"$gridwatch" stack up ${stack_args[@]+"${stack_args[@]}"}
trap '"$gridwatch" stack down' EXIT
# The event desk (http://127.0.0.1:18080/desk/yingyang) needs a first user: on a fresh data
# dir the hub creates `admin` and prints its generated password once on stderr.
GRIDWATCH_API__BOOTSTRAP_ADMIN="${GRIDWATCH_API__BOOTSTRAP_ADMIN:-admin}" "$gridwatch" run --demo "$@"
