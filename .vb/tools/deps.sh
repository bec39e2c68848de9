#!/usr/bin/env bash
# Installs the Debian packages gradcache builds with, where missing. Sourced by the
# other scripts; safe to run again. The CUDA toolkit is optional (found on PATH or in
# /usr/local/cuda): without it the CPU build is made.
set -eu
pkgs=(meson ninja-build pkg-config gcc libc6-dev check libsubunit-dev libcjson-dev libyaml-dev libpng-dev
      libjpeg62-turbo-dev valgrind)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "gradcache: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="$PATH:/usr/local/cuda/bin"
fi
