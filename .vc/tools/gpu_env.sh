#!/usr/bin/env bash
# Sourced on a GPU machine that cannot reach a package registry: unpacks the Debian
# packages carried in .device-debs/ (fetched by ../shared/tools/device-debs.sh plus
# cjson, yaml, png, jpeg) into a private sysroot and points pkg-config and the
# loader at it, leaving the system's own libraries alone.
root=/tmp/gc-sysroot
if [ ! -d "$root" ]; then
  mkdir -p "$root"
  for f in .device-debs/*.deb; do dpkg -x "$f" "$root"; done
  for pc in "$root"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc "$root"/usr/share/pkgconfig/*.pc; do
    [ -f "$pc" ] && sed -i "s|^prefix=/usr|prefix=$root/usr|; s|^libdir=/usr|libdir=$root/usr|; s|^includedir=/usr|includedir=$root/usr|" "$pc"
  done
fi
export PKG_CONFIG_PATH="$root/usr/lib/x86_64-linux-gnu/pkgconfig:$root/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export PATH="$PATH:/usr/local/cuda/bin"
