#!/usr/bin/env bash
# Builds the kernelbox kernel image under the tag given as $1, from this recipe directory.
# Skips when the tag exists. Uses the Dockerfile when a registry answers, otherwise builds
# offline from Debian packages (mmdebstrap root filesystem, then docker import).
set -euo pipefail
tag=${1:?usage: build.sh TAG}
recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suite=${KERNELBOX_DEBIAN_SUITE:-bookworm}
mirror=${KERNELBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
say() { echo "kernelbox image: $*" >&2; }

if docker image inspect "$tag" >/dev/null 2>&1; then
  say "$tag already exists; nothing to do"
  exit 0
fi

base=$(sed -n 's/^FROM //p' "$recipe_dir/Dockerfile" | head -n1)
if [[ ${KERNELBOX_OFFLINE:-auto} != 1 ]] && docker pull "$base" >/dev/null 2>&1; then
  say "registry answered; building $tag from $recipe_dir/Dockerfile"
  docker build --label "kernelbox.recipe=${tag##*:}" -t "$tag" "$recipe_dir"
  exit 0
fi

say "no registry; building $tag offline from Debian $suite packages"
if ! command -v mmdebstrap >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    say "mmdebstrap is missing; install it (apt-get install mmdebstrap) or run this as root"
    exit 1
  fi
  say "installing mmdebstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >&2
fi
packages=$(grep -v '^#' "$recipe_dir/packages.txt" | xargs | tr ' ' ',')
# pip inside the chroot verifies TLS with the host's CA bundle: the way to PyPI may pass
# through a TLS-intercepting proxy that only the host's bundle knows.
ca_bundle=${KERNELBOX_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[[ -r $ca_bundle ]] || ca_bundle=""
start=$SECONDS
# The root filesystem streams straight into docker import; nothing large lands on disk twice.
mmdebstrap --variant=apt --include="$packages" \
  --customize-hook='chroot "$1" useradd --uid 1000 --user-group --home-dir /home/kernel --create-home kernel' \
  --customize-hook='mkdir -p "$1/workspace" && chown 1000:1000 "$1/workspace"' \
  --customize-hook="cp '$recipe_dir/pip-packages.txt' \"\$1/tmp/pip-packages.txt\"" \
  --customize-hook="if [ -n '$ca_bundle' ]; then cp '$ca_bundle' \"\$1/tmp/host-ca.pem\"; fi" \
  --customize-hook='chroot "$1" sh -c "if [ -f /tmp/host-ca.pem ]; then export PIP_CERT=/tmp/host-ca.pem; fi; python3 -m pip install --no-cache-dir --break-system-packages --disable-pip-version-check -r /tmp/pip-packages.txt"' \
  --customize-hook='rm -f "$1/tmp/pip-packages.txt" "$1/tmp/host-ca.pem"' \
  --customize-hook='chroot "$1" find / -xdev -perm /6000 -type f -exec chmod a-s {} +' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  "$suite" - "$mirror" \
  | docker import \
      -c 'ENV MPLBACKEND=module://matplotlib_inline.backend_inline' \
      -c 'ENV PYTHONUNBUFFERED=1' \
      -c 'ENV HOME=/tmp' \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c "LABEL kernelbox.recipe=${tag##*:}" \
      -c 'USER 1000:1000' \
      -c 'WORKDIR /workspace' \
      -c 'ENTRYPOINT ["/usr/bin/tini", "--"]' \
      - "$tag" >&2
say "built $tag in $((SECONDS - start)) s"
