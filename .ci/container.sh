#!/usr/bin/env bash
# The CPU container, built with podman on a machine without Docker Hub. Used by CI and by
# tests/test_container.py; idempotent: a base image that is already there is re-used, and podman's
# layer cache makes a rebuild with unchanged requirements take seconds.
#
#   .ci/container.sh base            the Debian bookworm base image (debootstrap + podman import)
#   .ci/container.sh build [ARGS]    base, then the app image (extra ARGS go to podman build)
#   .ci/container.sh podman ARGS     podman with this script's settings (run, ps, rm, images ...)
#   .ci/container.sh size [IMAGE]    an image's size in bytes
#
# podman's state (images, containers, networks, scratch space, the base image's root file system)
# lives under $CONTAINER_STATE (default build/containers/), configured by .ci/containers/; only
# podman's small blob-info cache still goes to /var/lib/containers/cache (podman 4.3 has no setting).
# Environment: IMAGE (default localhost/vispect:cpu), BASE_IMAGE (default
# localhost/debian-base:bookworm; docker.io/library/python:3.11-slim-bookworm where Docker Hub is
# reachable, which is then pulled instead of made).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${CONTAINER_STATE:-$ROOT/build/containers}
IMAGE=${IMAGE:-localhost/vispect:cpu}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-base:bookworm}
SUITE=bookworm

log() { printf '[container.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

# Render .ci/containers/*.in for this machine and point podman/buildah at them. Sets nofile and
# nproc: the host's hard limits, which podman build needs as --ulimit too (it ignores containers.conf's).
configure() {
  mkdir -p "$STATE/run" "$STATE/storage" "$STATE/networks" "$STATE/tmp"
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  # The sandbox also refuses an nproc above pid_max (seen: 32768 works, 32769 does not).
  local pid_max
  pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
  for name in containers.conf storage.conf; do
    sed -e "s|@STATE@|$STATE|g" -e "s|@NOFILE@|$nofile|g" -e "s|@NPROC@|$nproc|g" \
      "$ROOT/.ci/containers/$name.in" >"$STATE/$name.tmp"
    mv "$STATE/$name.tmp" "$STATE/$name"
  done
  export CONTAINERS_CONF="$STATE/containers.conf"
  export CONTAINERS_STORAGE_CONF="$STATE/storage.conf"
  export CONTAINERS_REGISTRIES_CONF="$ROOT/.ci/containers/registries.conf"
  export TMPDIR="$STATE/tmp"  # buildah's scratch space (default /var/tmp)
}

require() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "error: ${missing[*]} not installed: apt-get install -y podman buildah debootstrap runc" >&2
    exit 1
  fi
}

# The Debian mirror apt uses on this machine for the main archive of $SUITE.
debian_mirror() {
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null |
    awk -v suite="$SUITE" '$2 == suite && $3 == "main" { print $1; exit }'
}

base() {
  require podman
  configure
  if podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE already built: re-used"
    return
  fi
  case "$BASE_IMAGE" in
    localhost/*) ;;
    *) podman pull "$BASE_IMAGE"; return ;;
  esac
  require debootstrap
  local mirror rootfs="$STATE/rootfs" proxy=
  mirror=$(debian_mirror)
  [ -n "$mirror" ] || mirror=${DEBIAN_MIRROR:-}
  [ -n "$mirror" ] || { echo "container.sh: no Debian mirror in apt's sources; set DEBIAN_MIRROR to the one apt uses" >&2; exit 2; }
  # apt's proxy, if it has one, is debootstrap's too.
  eval "$(apt-config shell proxy Acquire::http::Proxy 2>/dev/null)" || true
  if [ -n "$proxy" ]; then export http_proxy="$proxy"; fi
  log "debootstrap $SUITE from $mirror into $rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv \
    "$SUITE" "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 ||
    { tail -20 "$STATE/debootstrap.log" >&2; exit 1; }
  # The package proxy re-signs TLS: pip inside the build needs the host's extra CA certificates.
  if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    cp -r /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
  fi
  env -u TMPDIR chroot "$rootfs" update-ca-certificates >/dev/null
  env -u TMPDIR chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
    "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
  tar -C "$rootfs" --numeric-owner -c . |
    podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "base image $BASE_IMAGE: $(size "$BASE_IMAGE") bytes"
}

# pip's settings on this host, as build args: the index, extra indexes, trusted hosts, timeout and
# CA bundle from PIP_* variables or pip's config files. Local file:// indexes and folders do not
# exist inside the build and are left out (find-links is not passed for that reason); a CA bundle
# becomes the base image's system bundle, which has the host's extra CAs (see base()). Proxies
# (HTTP(S)_PROXY, NO_PROXY) are passed by podman build itself (--http-proxy, on by default).
pip_build_args() {
  local pip=(python3 -m pip)
  [ -x "$ROOT/.venv/bin/python" ] && pip=("$ROOT/.venv/bin/python" -m pip)
  "${pip[@]}" --version >/dev/null 2>&1 || return 0
  local key value env_name item out
  for key in index-url extra-index-url trusted-host default-timeout cert; do
    env_name="PIP_$(echo "$key" | tr 'a-z-' 'A-Z_')"
    value=${!env_name:-$("${pip[@]}" config get "global.$key" 2>/dev/null || true)}
    # The index pip uses when none is configured: say so, rather than leave the build arg unset.
    if [ "$key" = index-url ] && [ -z "$value" ]; then
      value=$("${pip[0]}" -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)' 2>/dev/null || true)
    fi
    [ -n "$value" ] || continue
    out=()
    if [ "$key" = cert ]; then
      out=(/etc/ssl/certs/ca-certificates.crt)
    else
      for item in $value; do
        case "$item" in file:* | /* | .*) ;; *) out+=("$item") ;; esac
      done
    fi
    if [ ${#out[@]} -gt 0 ]; then printf -- '--build-arg\n%s=%s\n' "$env_name" "${out[*]}"; fi
  done
  return 0
}

build() {
  base
  require podman
  local args=()
  mapfile -t args < <(pip_build_args)
  log "building $IMAGE from $BASE_IMAGE ${args[*]:+(pip: ${args[*]})}"
  local start=$SECONDS
  podman build --format docker --network host --layers \
    --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" "${args[@]}" "$@" \
    -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
  log "built $IMAGE in $((SECONDS - start)) s: $(size "$IMAGE") bytes"
}

size() {
  podman image inspect --format '{{.Size}}' "${1:-$IMAGE}"
}

command=${1:-build}
[ $# -gt 0 ] && shift
case "$command" in
  base) base ;;
  build) build "$@" ;;
  podman) configure; require podman; exec podman "$@" ;;
  size) configure; size "$@" ;;
  *) echo "usage: $0 base | build [podman build args] | podman ARGS | size [IMAGE]" >&2; exit 2 ;;
esac
