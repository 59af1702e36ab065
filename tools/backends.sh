#!/usr/bin/env bash
# Real backends for the end-to-end suite: build every binary once from the Go module proxy, cache it
# outside the work tree, and tell the tests where it is.
#
#   tools/backends.sh install [COMPONENT...]   make the binaries available (idempotent; warm = seconds)
#                                              COMPONENT: collector prometheus alertmanager jaeger
#                                              victorialogs compose (default: all)
#   tools/backends.sh paths                    print `export NAME=path` lines for the test suite
#   tools/backends.sh versions                 print the pinned versions
#
# Only permissively licensed code is built here (Apache-2.0): the OpenTelemetry Collector (ocb, from
# collector/manifest.yaml), Prometheus + promtool, Alertmanager + amtool, Jaeger v2 (traces),
# VictoriaLogs (logs) and docker compose (validates docker-compose.yml). Loki, Tempo and Grafana are
# AGPL-3.0: their modules are never downloaded or built (tests/test_backends_licences.py checks).
#
# Cache: ${OTEL_SERVICE_CACHE:-$HOME/.cache/otel-service}/bin/, one file per version and hash of its
# build inputs (this script's build recipe, and collector/manifest.yaml or the wrapper module's
# go.mod + go.sum), so changing a pin, a manifest or a wrapper rebuilds. Build logs: $CACHE/logs/.
# Go's own caches (GOPATH, GOCACHE, GOMODCACHE) stay at their defaults under $HOME.
# Builds run under `nice -n 10` (BUILD_NICE=0 to change) and with CGO_ENABLED=0 (static binaries).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${OTEL_SERVICE_CACHE:-$HOME/.cache/otel-service}"
BIN="$CACHE/bin"
LOGS="$CACHE/logs"
BUILD="$CACHE/build"
NICE="${BUILD_NICE:-10}"

# Pinned versions. The collector version must match every gomod line in collector/manifest.yaml
# (ocb checks); Jaeger's and compose's are the ones required by tools/backends/{jaeger,compose}/go.mod.
COLLECTOR_VERSION="0.165.0"
PROMETHEUS_VERSION="3.16.0"          # Go module github.com/prometheus/prometheus v0.316.0
PROMETHEUS_MODULE_VERSION="v0.316.0"
ALERTMANAGER_VERSION="0.35.0"
JAEGER_VERSION="1.75.0"              # github.com/jaegertracing/jaeger v1.75.0 (Jaeger v2 binary cmd/jaeger)
VICTORIALOGS_VERSION="1.52.2"
COMPOSE_VERSION="5.6.0"

COLLECTOR_MANIFEST="$ROOT/collector/manifest.yaml"
JAEGER_WRAPPER="$ROOT/tools/backends/jaeger"
COMPOSE_WRAPPER="$ROOT/tools/backends/compose"

# Prometheus build tags: netgo (no cgo resolver) and remove_all_sd (only the static and file service
# discoveries, which is all prometheus/prometheus.yml uses; the cloud SDKs make the build 3x longer).
# No `builtinassets`: the module has no web UI assets; the HTTP API is complete without them.
PROMETHEUS_TAGS="netgo,remove_all_sd"

log() { printf '[backends] %s\n' "$*" >&2; }
die() { printf '[backends] ERROR: %s\n' "$*" >&2; exit 1; }

find_go() {
  if [[ -n "${GO:-}" ]]; then echo "$GO"; return; fi
  if command -v go >/dev/null 2>&1; then command -v go; return; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
  return 1
}

# hash of build inputs (files, then strings) -> 12 hex chars
input_hash() {
  local files=() strings=()
  for a in "$@"; do if [[ -f "$a" ]]; then files+=("$a"); else strings+=("$a"); fi; done
  { [[ ${#files[@]} -gt 0 ]] && cat "${files[@]}"; printf '%s\n' "${strings[@]}"; } | sha256sum | cut -c1-12
}

collector_bin()    { echo "$BIN/otelcol-otel-service-$COLLECTOR_VERSION-$(input_hash "$COLLECTOR_MANIFEST")"; }
ocb_bin()          { echo "$BIN/ocb-$COLLECTOR_VERSION"; }
prom_recipe()      { echo "prometheus $PROMETHEUS_MODULE_VERSION tags=$PROMETHEUS_TAGS"; }
prometheus_bin()   { echo "$BIN/prometheus-$PROMETHEUS_VERSION-$(input_hash "$(prom_recipe)")"; }
promtool_bin()     { echo "$BIN/promtool-$PROMETHEUS_VERSION-$(input_hash "$(prom_recipe)")"; }
am_recipe()        { echo "alertmanager v$ALERTMANAGER_VERSION netgo ui-stub"; }
alertmanager_bin() { echo "$BIN/alertmanager-$ALERTMANAGER_VERSION-$(input_hash "$(am_recipe)")"; }
amtool_bin()       { echo "$BIN/amtool-$ALERTMANAGER_VERSION-$(input_hash "$(am_recipe)")"; }
jaeger_bin()       { echo "$BIN/jaeger-$JAEGER_VERSION-$(input_hash "$JAEGER_WRAPPER/go.mod" "$JAEGER_WRAPPER/go.sum")"; }
vl_recipe()        { echo "victorialogs v$VICTORIALOGS_VERSION app/victoria-logs netgo"; }
victorialogs_bin() { echo "$BIN/victoria-logs-$VICTORIALOGS_VERSION-$(input_hash "$(vl_recipe)")"; }
compose_bin()      { echo "$BIN/docker-compose-$COMPOSE_VERSION-$(input_hash "$COMPOSE_WRAPPER/go.mod" "$COMPOSE_WRAPPER/go.sum")"; }

# run_logged COMPONENT LOGFILE CMD... : run a build step, keep its output in LOGFILE, and on failure
# name the component and show the end of the log.
run_logged() {
  local component="$1" logfile="$2"; shift 2
  mkdir -p "$(dirname "$logfile")"
  if ! nice -n "$NICE" "$@" >"$logfile" 2>&1; then
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
  log "$(awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "%-12s done in %6.1fs", n, b - a }')"
}

# go_install_to OUT COMPONENT LOGNAME PKG@VERSION [go build flags...]: `go install` one main package of a
# module that has no replace/exclude directives, then move the binary to OUT (atomically).
go_install_to() {
  local out="$1" component="$2" logname="$3" pkg="$4"; shift 4
  local gobin="$BUILD/$logname"
  rm -rf "$gobin"; mkdir -p "$gobin"
  run_logged "$component" "$LOGS/$logname.log" env GOBIN="$gobin" CGO_ENABLED=0 "$GO" install "$@" "$pkg"
  local name="${pkg%@*}"; name="${name##*/}"
  [[ -x "$gobin/$name" ]] || die "$component: go install succeeded but produced no $gobin/$name"
  mv -f "$gobin/$name" "$out.tmp" && mv -f "$out.tmp" "$out"
  rm -rf "$gobin"
}

install_ocb() {
  local out; out=$(ocb_bin)
  if [[ -x "$out" ]]; then log "ocb: cached $out"; return; fi
  log "ocb: go install go.opentelemetry.io/collector/cmd/builder@v$COLLECTOR_VERSION"
  go_install_to "$out" "ocb (collector builder v$COLLECTOR_VERSION)" "ocb-$COLLECTOR_VERSION" \
    "go.opentelemetry.io/collector/cmd/builder@v$COLLECTOR_VERSION"
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

# promu_ldflags VERSION REVISION: -ldflags stamping a Prometheus project's binary as its .promu.yml
# does (--version, build_info).
promu_ldflags() {
  local v="github.com/prometheus/common/version"
  echo "-s -w -X $v.Version=$1 -X $v.Branch=release-${1%.*} -X $v.BuildUser=otel-service -X $v.Revision=$2"
}

install_prometheus() {
  local out; out=$(prometheus_bin)
  local tool; tool=$(promtool_bin)
  if [[ -x "$out" && -x "$tool" ]]; then log "prometheus: cached $out, $tool"; return; fi
  local ldflags; ldflags=$(promu_ldflags "$PROMETHEUS_VERSION" "$PROMETHEUS_MODULE_VERSION")
  log "prometheus: go install github.com/prometheus/prometheus/cmd/{prometheus,promtool}@$PROMETHEUS_MODULE_VERSION"
  go_install_to "$out" "prometheus $PROMETHEUS_VERSION" "prometheus-$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION" -tags "$PROMETHEUS_TAGS" -ldflags "$ldflags"
  go_install_to "$tool" "promtool $PROMETHEUS_VERSION" "promtool-$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION" -tags "$PROMETHEUS_TAGS" -ldflags "$ldflags"
}

install_alertmanager() {
  local out; out=$(alertmanager_bin)
  local tool; tool=$(amtool_bin)
  if [[ -x "$out" && -x "$tool" ]]; then log "alertmanager: cached $out, $tool"; return; fi
  local ldflags; ldflags=$(promu_ldflags "$ALERTMANAGER_VERSION" "v$ALERTMANAGER_VERSION")
  # The module zip has no built web UI (ui/app/dist is made by npm/elm in Alertmanager's release
  # build), and ui/web.go embeds that directory, so `go install ...@v0.35.0` fails. Build from a copy
  # of the module's source (verified by the proxy's checksum) with a one-file ui/app/dist: the API
  # (/api/v2, /-/ready) is complete; the web UI answers 404.
  log "alertmanager: go build github.com/prometheus/alertmanager/cmd/{alertmanager,amtool}@v$ALERTMANAGER_VERSION (UI assets stubbed)"
  local src="$BUILD/alertmanager-$ALERTMANAGER_VERSION-src"
  local dir
  dir=$(run_logged "alertmanager $ALERTMANAGER_VERSION (download)" "$LOGS/alertmanager-download.log" \
    "$GO" mod download -json "github.com/prometheus/alertmanager@v$ALERTMANAGER_VERSION" && \
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' "$LOGS/alertmanager-download.log")
  [[ -n "$dir" && -d "$dir" ]] || die "alertmanager: go mod download gave no module directory (log: $LOGS/alertmanager-download.log)"
  rm -rf "$src"; cp -R "$dir" "$src"; chmod -R u+w "$src"
  mkdir -p "$src/ui/app/dist"
  printf '%s\n' "Alertmanager's web UI is not part of this build (its Go module ships without the built assets)." \
    >"$src/ui/app/dist/NOTICE.txt"
  (cd "$src" && run_logged "alertmanager $ALERTMANAGER_VERSION" "$LOGS/alertmanager-$ALERTMANAGER_VERSION.log" \
    env CGO_ENABLED=0 "$GO" build -mod=readonly -tags netgo -ldflags "$ldflags" -o "$out.tmp" ./cmd/alertmanager)
  (cd "$src" && run_logged "amtool $ALERTMANAGER_VERSION" "$LOGS/amtool-$ALERTMANAGER_VERSION.log" \
    env CGO_ENABLED=0 "$GO" build -mod=readonly -tags netgo -ldflags "$ldflags" -o "$tool.tmp" ./cmd/amtool)
  mv -f "$out.tmp" "$out" && mv -f "$tool.tmp" "$tool"
  rm -rf "$src"
}

install_victorialogs() {
  local out; out=$(victorialogs_bin)
  if [[ -x "$out" ]]; then log "victorialogs: cached $out"; return; fi
  # Version stamped as VictoriaLogs's Makefile does (lib/buildinfo.Version, shown by -version).
  local ldflags="-s -w -X github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo.Version=victoria-logs-v$VICTORIALOGS_VERSION"
  log "victorialogs: go install github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs@v$VICTORIALOGS_VERSION"
  go_install_to "$out" "victorialogs $VICTORIALOGS_VERSION" "victoria-logs-$VICTORIALOGS_VERSION" \
    "github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs@v$VICTORIALOGS_VERSION" -tags netgo -ldflags "$ldflags"
}

# build_wrapped OUT COMPONENT WRAPPER LOGNAME PKG [go build flags...]: build PKG through a wrapper module
# (for modules whose replace/exclude directives `go install pkg@version` refuses).
build_wrapped() {
  local out="$1" component="$2" wrapper="$3" logname="$4" pkg="$5"; shift 5
  (cd "$wrapper" && run_logged "$component (wrapper module ${wrapper#"$ROOT"/})" "$LOGS/$logname.log" \
    env CGO_ENABLED=0 "$GO" build -mod=readonly "$@" -o "$out.tmp" "$pkg")
  mv -f "$out.tmp" "$out"
}

install_jaeger() {
  local out; out=$(jaeger_bin)
  if [[ -x "$out" ]]; then log "jaeger: cached $out"; return; fi
  log "jaeger: go build github.com/jaegertracing/jaeger/cmd/jaeger@v$JAEGER_VERSION (wrapper tools/backends/jaeger)"
  build_wrapped "$out" "jaeger $JAEGER_VERSION" "$JAEGER_WRAPPER" "jaeger-$JAEGER_VERSION" \
    github.com/jaegertracing/jaeger/cmd/jaeger -tags netgo \
    -ldflags "-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=v$JAEGER_VERSION"
}

install_compose() {
  local out; out=$(compose_bin)
  if [[ -x "$out" ]]; then log "compose: cached $out"; return; fi
  log "compose: go build github.com/docker/compose/v5/cmd@v$COMPOSE_VERSION (wrapper tools/backends/compose)"
  build_wrapped "$out" "docker compose $COMPOSE_VERSION" "$COMPOSE_WRAPPER" "compose-$COMPOSE_VERSION" \
    github.com/docker/compose/v5/cmd -tags netgo \
    -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=v$COMPOSE_VERSION"
}

ALL_COMPONENTS=(collector prometheus alertmanager jaeger victorialogs compose)

cmd_install() {
  local components=("$@")
  [[ ${#components[@]} -eq 0 ]] && components=("${ALL_COMPONENTS[@]}")
  mkdir -p "$BIN" "$LOGS" "$BUILD"
  for c in "${components[@]}"; do
    [[ " ${ALL_COMPONENTS[*]} " == *" $c "* ]] || die "unknown component '$c' (${ALL_COMPONENTS[*]})"
  done
  GO=$(find_go) || die "go: no Go toolchain found (PATH, \$GO or /usr/local/go/bin/go); go >= 1.26.8 is needed"
  log "using $("$GO" version) ($GO)"
  # One installer at a time per cache (parallel test sessions share it).
  exec 9>"$CACHE/.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  local t0; t0=$(date +%s.%N)
  for c in "${components[@]}"; do
    step "$c" "install_$c"
  done
  log "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "total        done in %6.1fs", b - a }')"
}

cmd_paths() {
  local missing=()
  emit() { # NAME PATH COMPONENT
    if [[ -n "$2" && -x "$2" ]]; then printf 'export %s=%q\n' "$1" "$2"
    else missing+=("$1 ($3)"); fi
  }
  emit OTELCOL_BIN "$(collector_bin)" collector
  emit PROMETHEUS_BIN "$(prometheus_bin)" prometheus
  emit PROMTOOL_BIN "$(promtool_bin)" prometheus
  emit ALERTMANAGER_BIN "$(alertmanager_bin)" alertmanager
  emit AMTOOL_BIN "$(amtool_bin)" alertmanager
  emit JAEGER_BIN "$(jaeger_bin)" jaeger
  emit VICTORIALOGS_BIN "$(victorialogs_bin)" victorialogs
  emit COMPOSE_BIN "$(compose_bin)" compose
  if [[ ${#missing[@]} -gt 0 ]]; then
    die "not installed: ${missing[*]} -- run: tools/backends.sh install"
  fi
}

cmd_versions() {
  echo "collector otelcol-otel-service $COLLECTOR_VERSION (ocb $COLLECTOR_VERSION)"
  echo "prometheus $PROMETHEUS_VERSION (github.com/prometheus/prometheus $PROMETHEUS_MODULE_VERSION)"
  echo "alertmanager $ALERTMANAGER_VERSION"
  echo "jaeger $JAEGER_VERSION (cmd/jaeger, Jaeger v2)"
  echo "victorialogs $VICTORIALOGS_VERSION"
  echo "docker-compose $COMPOSE_VERSION"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  paths) cmd_paths ;;
  versions) cmd_versions ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
