#!/usr/bin/env bash
# Debian packages the test suite and demos use. Installs what is missing when run as root;
# otherwise names the packages to install and fails, so nothing silently goes untested.
set -euo pipefail

# package -> command it provides (checked first, so a second run is instant)
declare -A PACKAGES=(
  [prometheus]=prometheus
)

missing=()
for package in "${!PACKAGES[@]}"; do
  command -v "${PACKAGES[$package]}" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed system packages: ${missing[*]}"
