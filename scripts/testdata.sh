#!/usr/bin/env bash
# Test data from Debian packages, unpacked into .testdata/ (no system install, no deps):
# dataset-fashion-mnist (idx.gz images) and the photos darknet ships. Skips what is there,
# either already unpacked or installed system-wide under /usr/share.
set -euo pipefail
cd "$(dirname "$0")/.."
want=()
[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] \
  || [ -e .testdata/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] \
  || want+=(dataset-fashion-mnist)
[ -e /usr/share/darknet/data/dog.jpg ] || [ -e .testdata/usr/share/darknet/data/dog.jpg ] \
  || want+=(darknet)
[ ${#want[@]} -eq 0 ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && { apt-get download "${want[@]}" >/dev/null 2>&1 \
  || { apt-get update -qq >/dev/null && apt-get download "${want[@]}" >/dev/null; }; } )
mkdir -p .testdata
for deb in "$tmp"/*.deb; do
  dpkg-deb -x "$deb" .testdata
done
echo "test data unpacked into .testdata/: ${want[*]}"
