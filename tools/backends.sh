#!/usr/bin/env bash
# Real backends for the end-to-end suite: build or install every binary once, cache it outside the
# work tree, and tell the tests where it is.
#
#   tools/backends.sh install [COMPONENT...]   make the binaries available (idempotent; warm = seconds)
#                                              COMPONENT: apt collector loki tempo (default: all)
#   tools/backends.sh paths                    print `export NAME=path` lines for the test suite
#   tools/backends.sh versions                 print the pinned versions
#
# Cache: ${OTEL_SERVICE_CACHE:-$HOME/.cache/otel-service}/bin/, one file per version, and for the
# Go-built ones also per hash of their build inputs (collector/manifest.yaml, the wrapper module's
# go.mod + go.sum), so changing a manifest or wrapper rebuilds. Build logs: $CACHE/logs/.
# Go's own caches (GOPATH, GOCACHE, GOMODCACHE) stay at their defaults under $HOME.
#
# Sources: prometheus, promtool, alertmanager, amtool from Debian (packages prometheus,
# prometheus-alertmanager; Debian's Alertmanager binary is /usr/bin/prometheus-alertmanager); the collector from collector/manifest.yaml with the OpenTelemetry
# Collector Builder (ocb); Loki and Tempo from their Go modules through the wrapper modules in
# tools/backends/{loki,tempo}/ (their go.mod files repeat the upstream replace directives).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${OTEL_SERVICE_CACHE:-$HOME/.cache/otel-service}"
BIN="$CACHE/bin"
LOGS="$CACHE/logs"
BUILD="$CACHE/build"

# Pinned versions. The collector version must match every gomod line in collector/manifest.yaml;
# Loki/Tempo versions are the ones required by tools/backends/{loki,tempo}/go.mod.
COLLECTOR_VERSION="0.155.0"
LOKI_VERSION="3.7.8"
# Tempo is required by pseudo-version (module path has no /v2): main @ 87c2dc380cec, 2025-05-29,
# which is v2.8.0-rc.0 plus a few commits.
TEMPO_VERSION="2.8.0-rc.0-87c2dc380cec"
DEBIAN_PACKAGES=(prometheus prometheus-alertmanager)

COLLECTOR_MANIFEST="$ROOT/collector/manifest.yaml"
LOKI_WRAPPER="$ROOT/tools/backends/loki"
TEMPO_WRAPPER="$ROOT/tools/backends/tempo"

log() { printf '[backends] %s\n' "$*" >&2; }
die() { printf '[backends] ERROR: %s\n' "$*" >&2; exit 1; }

find_go() {
  if [[ -n "${GO:-}" ]]; then echo "$GO"; return; fi
  if command -v go >/dev/null 2>&1; then command -v go; return; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
  return 1
}

# hash of build inputs -> 12 hex chars
input_hash() { cat "$@" | sha256sum | cut -c1-12; }

collector_bin() { echo "$BIN/otelcol-otel-service-$COLLECTOR_VERSION-$(input_hash "$COLLECTOR_MANIFEST")"; }
ocb_bin()       { echo "$BIN/ocb-$COLLECTOR_VERSION"; }
loki_bin()      { echo "$BIN/loki-$LOKI_VERSION-$(input_hash "$LOKI_WRAPPER/go.mod" "$LOKI_WRAPPER/go.sum")"; }
tempo_bin()     { echo "$BIN/tempo-$TEMPO_VERSION-$(input_hash "$TEMPO_WRAPPER/go.mod" "$TEMPO_WRAPPER/go.sum")"; }

# run_logged COMPONENT LOGFILE CMD... : run a build step, keep its output in LOGFILE, and on failure
# name the component and show the end of the log.
run_logged() {
  local component="$1" logfile="$2"; shift 2
  mkdir -p "$(dirname "$logfile")"
  if ! "$@" >"$logfile" 2>&1; then
    printf '[backends] ---- last lines of %s ----\n' "$logfile" >&2
    tail -n 40 "$logfile" >&2 || true
    die "$component: build failed: $* (full log: $logfile)"
  fi
}

# step NAME FUNCTION : run FUNCTION and print how long it took
step() {
  local name="$1"; shift
  local t0; t0=$(date +%s.%N)
  "$@"
  local t1; t1=$(date +%s.%N)
  log "$(awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "%-10s done in %6.1fs", n, b - a }')"
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "apt: need root or sudo to run: $*"; fi
}

# Debian names the Alertmanager binary prometheus-alertmanager; accept either name.
find_tool() {
  case "$1" in
    alertmanager) command -v alertmanager 2>/dev/null || command -v prometheus-alertmanager 2>/dev/null ;;
    *) command -v "$1" 2>/dev/null ;;
  esac
}

install_apt() {
  local missing=()
  for tool in prometheus promtool alertmanager amtool; do
    find_tool "$tool" >/dev/null || missing+=("$tool")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "apt: prometheus, promtool, alertmanager, amtool already installed"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt: missing ${missing[*]} and no apt-get on this machine"
  log "apt: installing ${DEBIAN_PACKAGES[*]} (missing: ${missing[*]})"
  # Keep the packages' init scripts from starting daemons (which would hold ports 9090/9093):
  # policy-rc.d exit 101 = "action forbidden". Only added if the machine has none, removed after.
  local added_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
    added_policy=1
  fi
  local rc=0
  {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${DEBIAN_PACKAGES[@]}"
  } >"$LOGS/apt.log" 2>&1 || rc=$?
  [[ -n "$added_policy" ]] && as_root rm -f /usr/sbin/policy-rc.d
  if [[ $rc -ne 0 ]]; then
    tail -n 30 "$LOGS/apt.log" >&2
    die "apt: apt-get install ${DEBIAN_PACKAGES[*]} failed (full log: $LOGS/apt.log)"
  fi
  # Stop anything a postinst may have started anyway on a systemd machine; the tests run their own.
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    as_root systemctl disable --now prometheus prometheus-node-exporter prometheus-alertmanager \
      >/dev/null 2>&1 || true
  fi
  for tool in prometheus promtool alertmanager amtool; do
    find_tool "$tool" >/dev/null || die "apt: $tool still missing after installing ${DEBIAN_PACKAGES[*]}"
  done
}

install_ocb() {
  local out; out=$(ocb_bin)
  if [[ -x "$out" ]]; then log "ocb: cached $out"; return; fi
  local gobin="$BUILD/ocb-$COLLECTOR_VERSION"
  rm -rf "$gobin"; mkdir -p "$gobin"
  log "ocb: go install go.opentelemetry.io/collector/cmd/builder@v$COLLECTOR_VERSION"
  run_logged "ocb (collector builder v$COLLECTOR_VERSION)" "$LOGS/ocb.log" \
    env GOBIN="$gobin" "$GO" install "go.opentelemetry.io/collector/cmd/builder@v$COLLECTOR_VERSION"
  mv -f "$gobin/builder" "$out"
  rm -rf "$gobin"
}

install_collector() {
  local out; out=$(collector_bin)
  if [[ -x "$out" ]]; then log "collector: cached $out"; return; fi
  step ocb install_ocb
  local dir="$BUILD/otelcol-$COLLECTOR_VERSION"
  rm -rf "$dir"; mkdir -p "$dir"
  # Same manifest, with output_path pointed into the cache (ocb has no flag for it).
  sed -E "s#^([[:space:]]*output_path:).*#\\1 $dir/src#" "$COLLECTOR_MANIFEST" >"$dir/manifest.yaml"
  grep -q "output_path: $dir/src" "$dir/manifest.yaml" ||
    die "collector: could not set dist.output_path in a copy of $COLLECTOR_MANIFEST"
  log "collector: ocb --config=collector/manifest.yaml (otelcol-otel-service $COLLECTOR_VERSION)"
  run_logged "collector (otelcol-otel-service $COLLECTOR_VERSION from collector/manifest.yaml)" \
    "$LOGS/collector.log" env CGO_ENABLED=0 "$(ocb_bin)" --config="$dir/manifest.yaml"
  [[ -x "$dir/src/otelcol-otel-service" ]] || die "collector: ocb succeeded but produced no binary in $dir/src"
  mv -f "$dir/src/otelcol-otel-service" "$out.tmp" && mv -f "$out.tmp" "$out"
  rm -rf "$dir"
}

install_loki() {
  local out; out=$(loki_bin)
  if [[ -x "$out" ]]; then log "loki: cached $out"; return; fi
  log "loki: go build github.com/grafana/loki/v3/cmd/loki@v$LOKI_VERSION (wrapper tools/backends/loki)"
  # Flags as Loki's Makefile: static (netgo, no cgo), stripped, version stamped.
  (cd "$LOKI_WRAPPER" && run_logged "loki $LOKI_VERSION (wrapper module tools/backends/loki)" "$LOGS/loki.log" \
    env CGO_ENABLED=0 "$GO" build -mod=readonly -tags netgo \
      -ldflags "-s -w -X github.com/grafana/loki/v3/pkg/util/build.Version=$LOKI_VERSION -X github.com/grafana/loki/v3/pkg/util/build.Branch=release-${LOKI_VERSION%.*}.x" \
      -o "$out.tmp" github.com/grafana/loki/v3/cmd/loki)
  mv -f "$out.tmp" "$out"
}

install_tempo() {
  local out; out=$(tempo_bin)
  if [[ -x "$out" ]]; then log "tempo: cached $out"; return; fi
  log "tempo: go build github.com/grafana/tempo/cmd/tempo ($TEMPO_VERSION, wrapper tools/backends/tempo)"
  # GOSUMDB=off: the checksum database has no entry for Tempo's pseudo-version (nor for a few of
  # its dependencies); every module hash is pinned in the committed go.sum, which -mod=readonly
  # enforces.
  (cd "$TEMPO_WRAPPER" && run_logged "tempo $TEMPO_VERSION (wrapper module tools/backends/tempo)" "$LOGS/tempo.log" \
    env CGO_ENABLED=0 GOSUMDB=off "$GO" build -mod=readonly \
      -ldflags "-s -w -X main.Version=$TEMPO_VERSION -X main.Branch=main -X main.Revision=${TEMPO_VERSION##*-}" \
      -o "$out.tmp" github.com/grafana/tempo/cmd/tempo)
  mv -f "$out.tmp" "$out"
}

cmd_install() {
  local components=("$@")
  [[ ${#components[@]} -eq 0 ]] && components=(apt collector loki tempo)
  mkdir -p "$BIN" "$LOGS" "$BUILD"
  for c in "${components[@]}"; do
    case "$c" in apt|collector|loki|tempo) ;; *) die "unknown component '$c' (apt collector loki tempo)";; esac
  done
  if [[ " ${components[*]} " =~ \ (collector|loki|tempo)\  ]]; then
    GO=$(find_go) || die "go: no Go toolchain found (PATH, \$GO or /usr/local/go/bin/go); Loki $LOKI_VERSION needs go >= 1.26.5"
    log "using $("$GO" version) ($GO)"
  fi
  # One installer at a time per cache (parallel test sessions share it).
  exec 9>"$CACHE/.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  local t0; t0=$(date +%s.%N)
  for c in "${components[@]}"; do
    step "$c" "install_$c"
  done
  log "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "total      done in %6.1fs", b - a }')"
}

cmd_paths() {
  local missing=() line
  emit() { # NAME PATH COMPONENT
    if [[ -n "$2" && -x "$2" ]]; then printf 'export %s=%q\n' "$1" "$2"
    else missing+=("$1 ($3)"); fi
  }
  emit OTELCOL_BIN "$(collector_bin)" collector
  emit LOKI_BIN "$(loki_bin)" loki
  emit TEMPO_BIN "$(tempo_bin)" tempo
  emit PROMETHEUS_BIN "$(find_tool prometheus || true)" apt
  emit PROMTOOL_BIN "$(find_tool promtool || true)" apt
  emit ALERTMANAGER_BIN "$(find_tool alertmanager || true)" apt
  emit AMTOOL_BIN "$(find_tool amtool || true)" apt
  if [[ ${#missing[@]} -gt 0 ]]; then
    die "not installed: ${missing[*]} -- run: tools/backends.sh install"
  fi
}

cmd_versions() {
  echo "collector otelcol-otel-service $COLLECTOR_VERSION (ocb $COLLECTOR_VERSION)"
  echo "loki $LOKI_VERSION"
  echo "tempo $TEMPO_VERSION"
  for p in "${DEBIAN_PACKAGES[@]}"; do
    echo "debian $p $(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo '(not installed)')"
  done
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  paths) cmd_paths ;;
  versions) cmd_versions ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
