#!/usr/bin/env bash
# Build a local stand-in for the upstream PyTorch runtime image, from Debian's
# packages only (for machines that cannot pull from Docker Hub, such as CI here):
#   debootstrap minbase bookworm + Python 3.11 venv at /opt/venv + the CPU torch wheel,
#   with this host's CA bundle trusted (HTTPS may be intercepted on the build network).
# The backend Dockerfiles then build FROM it via --build-arg BASE_IMAGE=<name>.
#
#   images/base/build-local-base.sh [IMAGE_NAME]      (default llem-base:bookworm-cpu)
set -euo pipefail

NAME="${1:-llem-base:bookworm-cpu}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
MIRROR="${MIRROR:-}"
if [[ -z "$MIRROR" ]]; then
  MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [[ -z "$MIRROR" ]] && MIRROR="$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

for tool in debootstrap docker; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install -y debootstrap docker.io)" >&2; exit 2; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

echo "== torch ${TORCH_VERSION} wheel (CPU build where pip finds one)"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 -d "$work/wheels" "torch==${TORCH_VERSION}"
wheel="$(ls "$work"/wheels/torch-*.whl | head -n1)"
echo "   $(basename "$wheel")"

echo "== debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

# Trust what this host trusts (a TLS-intercepting proxy's CA, for example).
[[ -f "$CA_BUNDLE" ]] && cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"

echo "== Python venv at /opt/venv with torch"
chroot "$rootfs" python3 -m venv /opt/venv
cp "$wheel" "$rootfs/tmp/"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"  # torch's own dependencies come from PyPI
chroot "$rootfs" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
  /opt/venv/bin/pip install --quiet --no-cache-dir "/tmp/$(basename "$wheel")"
rm -f "$rootfs/tmp/"*.whl

echo "== docker import $NAME"
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'LABEL org.llenergymeasure.base=local-debootstrap-bookworm-cpu' \
  - "$NAME" >/dev/null
docker image inspect --format '{{.Id}}' "$NAME"
