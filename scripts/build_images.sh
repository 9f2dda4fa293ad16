#!/usr/bin/env bash
# Build facedb's CPU and CUDA images without a Docker daemon, and smoke-test them.
#
#   sudo scripts/build_images.sh [base|cpu|cuda|all]      (default all; needs root, podman and debootstrap)
#
# 1. A Debian bookworm base from debootstrap (--variant=minbase), imported as localhost/facedb-base:bookworm
#    (the Dockerfiles' BASE; with Docker and a registry at hand, their default debian:bookworm-slim does the same).
# 2. podman build --isolation=chroot of docker/Dockerfile (CPU: torch's CPU wheel from docker/wheels/, copied from
#    TORCH_WHEEL_DIR, else from the PyTorch CPU index) and docker/Dockerfile.cuda (PyPI's CUDA torch, faiss-gpu,
#    onnxruntime-gpu).
# 3. Each image's filesystem (podman create + podman mount) is run with chroot: migrate, serve, a request without a
#    key (401), two photos enrolled over HTTP with the bootstrap key, a third identified (the CUDA image on the CPU
#    when there is no GPU, and its torch / FAISS / onnxruntime CUDA builds checked by import); the image sizes and
#    results go to $RESULTS (default build/images.json).
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT="${1:-all}"
BASE_IMAGE="localhost/facedb-base:bookworm"
BASE_DIR="${BASE_DIR:-/var/tmp/facedb-base-bookworm}"
TORCH_WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"
RESULTS="${RESULTS:-build/images.json}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PHOTOS="${PHOTOS:-../shared/data/lfw/images/Colin_Powell}"
PORT="${PORT:-18431}"
mkdir -p "$(dirname "$RESULTS")"
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# Behind a TLS-inspecting proxy pip inside the build needs the host's CA bundle (HOST_CA="" to skip).
HOST_CA="${HOST_CA-/etc/ssl/certs/ca-certificates.crt}"
CA_ARGS=()
if [ -n "$HOST_CA" ] && [ -f "$HOST_CA" ]; then
  CA_ARGS=(--volume "$HOST_CA:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi

base() {
  if podman image exists "$BASE_IMAGE"; then
    log "base $BASE_IMAGE exists"
    return
  fi
  log "debootstrap --variant=minbase bookworm -> $BASE_DIR"
  rm -rf "$BASE_DIR"
  debootstrap --variant=minbase bookworm "$BASE_DIR" "$MIRROR" >&2
  rm -rf "$BASE_DIR"/var/cache/apt/archives/*.deb "$BASE_DIR"/var/lib/apt/lists/*
  tar -C "$BASE_DIR" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >&2
}

build_cpu() {
  rm -f docker/wheels/*.whl
  local args=()
  if ls "$TORCH_WHEEL_DIR"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    cp "$TORCH_WHEEL_DIR"/torch-2.13.0+cpu-*.whl docker/wheels/
    # the local CPU wheel (2.13.0+cpu sorts above PyPI's 2.13.0), its dependencies from PyPI
    args+=(--build-arg "TORCH_PIP_ARGS=--find-links /wheels")
  fi
  log "podman build facedb:cpu"
  local t0=$SECONDS
  podman build --isolation=chroot --format docker --build-arg "BASE=$BASE_IMAGE" "${CA_ARGS[@]}" "${args[@]}" \
    -f docker/Dockerfile -t facedb:cpu . >&2
  CPU_BUILD_S=$((SECONDS - t0))
  rm -f docker/wheels/*.whl
}

build_cuda() {
  log "podman build facedb:cuda"
  local t0=$SECONDS
  podman build --isolation=chroot --format docker --build-arg "BASE=$BASE_IMAGE" "${CA_ARGS[@]}" \
    -f docker/Dockerfile.cuda -t facedb:cuda . >&2
  CUDA_BUILD_S=$((SECONDS - t0))
}

size_of() { podman image inspect "$1" --format '{{.Size}}' 2>/dev/null || echo null; }

# Run an image's filesystem with chroot (as its user would run `docker run`): migrate, start, enrol, identify.
# Without a GPU here the CUDA image runs on the CPU; its CUDA stack is checked by import (cuda_imports).
smoke() {
  local image="$1" ctr root data key url pid status=failed
  ctr=$(podman create "$image")
  root=$(podman mount "$ctr")
  data="$root/data"
  mount --bind /proc "$root/proc"
  mount --bind /dev "$root/dev"
  cleanup_smoke() {
    if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    umount "$root/proc" "$root/dev" 2>/dev/null || true
    podman umount "$ctr" >/dev/null || true
    podman rm "$ctr" >/dev/null || true
  }
  trap cleanup_smoke RETURN
  local run=(chroot --userspec=10001:10001 "$root" env -i PATH=/opt/facedb/bin:/usr/bin:/bin HOME=/data
    FACEDB_DATA_DIR=/data FACEDB_LOG_FORMAT=json)
  if [ "$image" = facedb:cuda ]; then
    CUDA_IMPORTS=$( (cd /; "${run[@]}" python -c 'import json, torch, faiss, onnxruntime; print(json.dumps({
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "faiss": faiss.__version__,
        "faiss_gpu": hasattr(faiss, "GpuIndexFlatIP"), "onnxruntime": onnxruntime.get_available_providers()}))') )
  fi
  (cd /; "${run[@]}" facedb db upgrade) >&2
  (cd /; "${run[@]}" facedb serve --host 127.0.0.1 --port "$PORT") > build/smoke-server.log 2>&1 &
  pid=$!
  url="http://127.0.0.1:$PORT"
  for _ in $(seq 1 180); do
    curl -fs "$url/readyz" >/dev/null 2>&1 && break
    sleep 1
  done
  key=$(cat "$data/admin.key")
  local auth="Authorization: Bearer $key"
  local api="$url/v1/galleries/default"
  local person
  person=$(curl -fs -X POST "$api/identities" -H "$auth" -H 'content-type: application/json' \
    -d '{"external_id": "colin", "display_name": "Colin Powell"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -fs -X POST "$api/identities/$person/faces" -H "$auth" \
    -F "image=@$PHOTOS/Colin_Powell_0001.jpg" -F "image=@$PHOTOS/Colin_Powell_0002.jpg" > build/smoke-enrol.json
  curl -fs -X POST "$api/identify" -H "$auth" -F "image=@$PHOTOS/Colin_Powell_0003.jpg" > build/smoke-identify.json
  local unauth
  unauth=$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/galleries")
  if python3 - "$unauth" <<'PY'
import json, sys
answer = json.load(open("build/smoke-identify.json"))
assert sys.argv[1] == "401", f"no key answered {sys.argv[1]}"
assert answer["match"]["identity"]["external_id"] == "colin", answer
print(f"identify: match {answer['match']['identity']['display_name']} score {answer['match']['score']:.3f} "
      f"threshold {answer['threshold']:.3f} ({answer['model_version']})", file=sys.stderr)
PY
  then status=passed; fi
  if [ "$image" = facedb:cuda ]; then CUDA_SMOKE="$status"; else SMOKE="$status"; fi
}

CPU_BUILD_S=null CUDA_BUILD_S=null SMOKE=skipped CUDA_SMOKE=skipped CUDA_IMPORTS=null
base
case "$WHAT" in
  base) ;;
  cpu) build_cpu; smoke facedb:cpu ;;
  cuda) build_cuda; smoke facedb:cuda ;;
  all) build_cpu; smoke facedb:cpu; build_cuda; smoke facedb:cuda ;;
  *) echo "usage: $0 [base|cpu|cuda|all]" >&2; exit 2 ;;
esac

cat > "$RESULTS" <<EOF
{
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "podman": "$(podman --version)",
  "base_bytes": $(size_of "$BASE_IMAGE"),
  "cpu_bytes": $(size_of facedb:cpu),
  "cpu_build_s": $CPU_BUILD_S,
  "cpu_smoke_test": "$SMOKE",
  "cuda_bytes": $(size_of facedb:cuda),
  "cuda_build_s": $CUDA_BUILD_S,
  "cuda_smoke_test_on_cpu": "$CUDA_SMOKE",
  "cuda_imports": $CUDA_IMPORTS
}
EOF
cat "$RESULTS"
[ "$SMOKE" != failed ] && [ "$CUDA_SMOKE" != failed ]
