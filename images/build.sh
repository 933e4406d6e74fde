#!/usr/bin/env bash
# Builds a kernelbox kernel image under the tag given as $1, from the recipe staged beside this
# script: Dockerfile, packages.txt (Debian packages), pip-packages.txt (optional, from PyPI) and
# image-config.txt (the image's ENV and LABEL lines). Skips when the tag exists. Uses the
# Dockerfile when a registry answers, otherwise builds offline from Debian packages
# (mmdebstrap root filesystem, then docker import). Either way the image runs as uid 1000
# with no setuid or setgid files, and the build fails otherwise.
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
# through a TLS-intercepting proxy that only the host's bundle knows. It runs with a clean
# environment: a host variable such as REQUESTS_CA_BUNDLE would name a path that means the
# chroot's own bundle there, and would win over --cert.
ca_bundle=${KERNELBOX_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[[ -r $ca_bundle ]] || ca_bundle=""
pip_hooks=()
if grep -qv '^#' "$recipe_dir/pip-packages.txt" 2>/dev/null; then
  pip_hooks=(
    --customize-hook="cp '$recipe_dir/pip-packages.txt' \"\$1/tmp/pip-packages.txt\""
    --customize-hook="cp '${ca_bundle:-/dev/null}' \"\$1/tmp/build-ca.pem\""
    --customize-hook='chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root python3 -m pip install --no-cache-dir --break-system-packages --disable-pip-version-check $(test -s "$1/tmp/build-ca.pem" && echo --cert /tmp/build-ca.pem) -r /tmp/pip-packages.txt'
    --customize-hook='rm -f "$1/tmp/pip-packages.txt" "$1/tmp/build-ca.pem"'
  )
fi
# The recipe's own ENV and LABEL lines, then what every kernel image has.
config=()
while IFS= read -r line; do
  [[ -z $line || $line == '#'* ]] || config+=(-c "$line")
done <"$recipe_dir/image-config.txt"
start=$SECONDS
# The root filesystem streams straight into docker import; nothing large lands on disk twice.
# The image gets its tag only when every step succeeded, so a failed build leaves no tag that
# a later run would take for a finished image.
# Documentation, manual pages and translations stay out of the image (copyright files stay);
# mmdebstrap installs no recommended packages (packages.txt names the ones wanted).
if ! image_id=$(mmdebstrap --variant=apt --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='chroot "$1" useradd --uid 1000 --user-group --home-dir /home/kernel --create-home kernel' \
  --customize-hook='mkdir -p "$1/workspace" && chown 1000:1000 "$1/workspace"' \
  "${pip_hooks[@]}" \
  --customize-hook='chroot "$1" find / -xdev -perm /6000 -type f -exec chmod a-s {} +' \
  --customize-hook='test -z "$(chroot "$1" find / -xdev -perm /6000 -type f)" || { echo "setuid or setgid files remain" >&2; false; }' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  "$suite" - "$mirror" \
  | docker import \
      "${config[@]}" \
      -c 'ENV HOME=/tmp' \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c "LABEL kernelbox.recipe=${tag##*:}" \
      -c 'USER 1000:1000' \
      -c 'WORKDIR /workspace' \
      -c 'ENTRYPOINT ["/usr/bin/tini", "--"]' \
      -); then
  if [[ -n ${image_id:-} ]]; then docker rmi "$image_id" >/dev/null 2>&1 || true; fi
  say "building $tag failed; see the output above"
  exit 1
fi
docker tag "$image_id" "$tag"
say "built $tag in $((SECONDS - start)) s"
