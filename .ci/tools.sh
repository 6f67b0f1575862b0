#!/usr/bin/env bash
# Outside programs the tests drive (see tests/tools.py), from Debian's packages:
#   prometheus  promtool checks the monitoring profile; the prometheus server runs the dashboard's queries
#   chromium    the headless browser that opens every page of a job's gallery (Playwright drives it)
set -euo pipefail
packages=(prometheus chromium)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
