# Sourced by run.sh and test.sh: install what is missing, nothing else.
# Debian packages: only the missing ones, with invoke-rc.d held off so the packages'
# own system daemons (influxd listens on every interface by default) are not started;
# GridWatch starts its own instances bound to 127.0.0.1.
set -euo pipefail

gw_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

gw_apt_install() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "GridWatch needs these Debian packages: ${missing[*]} (run as root, or install them)" >&2
    return 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  local rc=0
  { apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"; } >&2 || rc=$?
  [ "$own_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  return $rc
}

gw_python() {
  # Python >= 3.11 with venv: the machine's python3 if recent enough, else Debian's.
  if command -v python3 >/dev/null && python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    command -v python3
    return
  fi
  gw_apt_install python3 python3-venv python3-pip >&2
  echo /usr/bin/python3
}

gw_venv() {
  # $1: pip extra ("" or "dev"); reinstalls only when pyproject.toml changed.
  local extra="${1:-}" venv="$gw_root/.venv" stamp
  [ -x "$venv/bin/python" ] || "$(gw_python)" -m venv "$venv"
  stamp="$(sha256sum "$gw_root/pyproject.toml" | cut -c1-16)-${extra}"
  if [ "$(cat "$venv/.gridwatch-installed" 2>/dev/null)" != "$stamp" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    if [ -n "$extra" ]; then
      "$venv/bin/python" -m pip install -q -e "$gw_root[$extra]" >&2
    else
      "$venv/bin/python" -m pip install -q -e "$gw_root" >&2
    fi
    echo "$stamp" > "$venv/.gridwatch-installed"
  fi
}
