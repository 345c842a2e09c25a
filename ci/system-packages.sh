#!/usr/bin/env bash
# Debian packages the tests need beyond Python (.ci/run calls this after the pip install):
#   chromium                           the browser Testing/browser drives through Playwright
#   libegl1 libegl-mesa0 libgl1-mesa-dri   CPU (llvmpipe) OpenGL through EGL for the studio's views
# Quiet and idempotent: installs only what is missing.
set -euo pipefail
packages=(chromium libegl1 libegl-mesa0 libgl1-mesa-dri)
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ci/system-packages.sh: apt-get not found; install ${missing[*]} by hand (the browser tests skip without them)" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "== system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
