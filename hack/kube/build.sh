#!/usr/bin/env bash
# Build (once) the binaries of the local test cluster: etcd 3.4, kube-apiserver and
# kube-controller-manager v1.20.2, from Debian bookworm's packages and sources.
#
#   bash hack/kube/build.sh CACHE_DIR        (make kube-bins: CACHE_DIR=~/.cache/yolo-v7/kube)
#
# Result: CACHE_DIR/bin/{etcd,kube-apiserver,kube-controller-manager}. Idempotent: when they exist and
# answer --version the script exits at once. The Debian source tree, the Go build cache and a private
# apt state live under CACHE_DIR too, so a re-run after a partial failure picks up where it stopped.
# Needs root (or sudo) only to apt-get install golang-go and Debian's reflect2 when they are missing.
set -euo pipefail

CACHE_DIR=${1:-${YOLO_KUBE_CACHE:-$HOME/.cache/yolo-v7/kube}}
KUBE_VERSION=v1.20.2
KUBE_SRC_VERSION=1.20.5+really1.20.2
BIN=$CACHE_DIR/bin
MIRROR=${YOLO_DEBIAN_MIRROR:-}

log() { printf '[kube-bins %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[kube-bins] error: %s\n' "$*" >&2; exit 1; }

have_bins() {
  [[ -x $BIN/etcd && -x $BIN/kube-apiserver && -x $BIN/kube-controller-manager ]] || return 1
  "$BIN/etcd" --version >/dev/null 2>&1 || return 1
  "$BIN/kube-apiserver" --version 2>/dev/null | grep -q "$KUBE_VERSION" || return 1
  "$BIN/kube-controller-manager" --version 2>/dev/null | grep -q "$KUBE_VERSION" || return 1
}

if have_bins; then
  echo "kube binaries ready in $BIN ($KUBE_VERSION)"
  exit 0
fi

mkdir -p "$BIN" "$CACHE_DIR/work"
CACHE_DIR=$(cd "$CACHE_DIR" && pwd)
BIN=$CACHE_DIR/bin
WORK=$CACHE_DIR/work
START=$(date +%s)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n); fi
fi

apt_install() {
  # apt_install PKG... : install Debian packages (root or passwordless sudo needed)
  if [[ $(id -u) -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
    die "missing tools; run as root (or with passwordless sudo), or install them first: apt-get install -y $*"
  fi
  log "apt-get install $*"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@" >/dev/null \
    || { "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null && \
         "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@" >/dev/null; } \
    || die "apt-get install $* failed"
}

# --- 1. tools: Go 1.19, Debian's reflect2 1.0.2 (Go >= 1.18 needs it), dpkg-dev for apt-get source -----
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
need=()
command -v go >/dev/null 2>&1 || [[ -x /usr/lib/go/bin/go ]] || need+=(golang-go)
[[ -d $REFLECT2 ]] || need+=(golang-github-modern-go-reflect2-dev)
command -v dpkg-source >/dev/null 2>&1 || need+=(dpkg-dev)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
((${#need[@]} == 0)) || apt_install "${need[@]}"
export PATH=/usr/lib/go/bin:$PATH
log "go: $(go version)"

# --- private apt state (never touches the system's sources or lists) ------------------------------
APT=$WORK/apt
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/parts"
if [[ -z $MIRROR ]]; then
  MIRROR=$(grep -hoE '^URIs: *https?://[^ ]*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}' || true)
  [[ -n $MIRROR ]] || MIRROR=$(grep -hoE '^deb +(\[[^]]*\] +)?https?://[^ ]*/debian/? ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -1 | awk '{print $NF}' || true)
  [[ -n $MIRROR ]] || MIRROR=http://deb.debian.org/debian
fi
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SIGNED=""; [[ -f $KEYRING ]] && SIGNED="[signed-by=$KEYRING] "
cat >"$APT/sources.list" <<EOF
deb ${SIGNED}${MIRROR%/} bookworm main
deb-src ${SIGNED}${MIRROR%/} bookworm main
EOF
APT_OPTS=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=$APT/parts"
          -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT" -o "Dir::Cache::archives=$APT/archives"
          -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=root" -q)
apt_private() { apt-get "${APT_OPTS[@]}" "$@"; }
lists_ready() { compgen -G "$APT/lists/*Sources*" >/dev/null; }

# --- 2. etcd (Debian's etcd-server 3.4.23, unpacked: no service is installed or started) ------------
if ! "$BIN/etcd" --version >/dev/null 2>&1; then
  lists_ready || { log "apt-get update (private state, $MIRROR)"; apt_private update >/dev/null; }
  log "fetching etcd-server"
  (cd "$WORK" && rm -f etcd-server_*.deb && apt_private download etcd-server >/dev/null)
  rm -rf "$WORK/etcd-root" && mkdir -p "$WORK/etcd-root"
  dpkg-deb -x "$WORK"/etcd-server_*.deb "$WORK/etcd-root"
  install -m 0755 "$WORK/etcd-root/usr/bin/etcd" "$BIN/etcd"
  "$BIN/etcd" --version | head -1 >&2
fi

# --- 3. kubernetes source (Debian's 1.20.5+really1.20.2) ---------------------------------------------
SRC=$WORK/kubernetes-src
if [[ ! -f $SRC/.unpacked ]]; then
  lists_ready || { log "apt-get update (private state, $MIRROR)"; apt_private update >/dev/null; }
  log "fetching kubernetes source $KUBE_SRC_VERSION (~30 MB)"
  rm -rf "$WORK/src-dl" && mkdir -p "$WORK/src-dl"
  (cd "$WORK/src-dl" && apt_private source --download-only kubernetes >/dev/null 2>"$WORK/src-dl/apt.log") \
    || { cat "$WORK/src-dl/apt.log" >&2; die "apt-get source kubernetes failed"; }
  log "unpacking source"
  compgen -G "$WORK/src-dl/kubernetes_${KUBE_SRC_VERSION}*.dsc" >/dev/null \
    || die "the mirror's kubernetes source is not $KUBE_SRC_VERSION: $(ls "$WORK/src-dl")"
  rm -rf "$SRC"
  (cd "$WORK/src-dl" && dpkg-source --no-check -x ./*.dsc "$SRC" >/dev/null)
  touch "$SRC/.unpacked"
fi

# --- 4. GOPATH layout, reflect2 swap -------------------------------------------------------------------
GOPATH=$WORK/gopath
mkdir -p "$GOPATH/src/k8s.io" "$GOPATH/bin"
ln -sfn "$SRC" "$GOPATH/src/k8s.io/kubernetes"
V_REFLECT2=$SRC/vendor/github.com/modern-go/reflect2
if [[ ! -f $V_REFLECT2/.debian-1.0.2 ]]; then
  log "replacing vendored modern-go/reflect2 with Debian's 1.0.2"
  rm -rf "$V_REFLECT2" && mkdir -p "$V_REFLECT2"
  cp -rL "$REFLECT2"/. "$V_REFLECT2"/
  rm -rf "$V_REFLECT2"/test* "$V_REFLECT2"/.git* 2>/dev/null || true
  find "$V_REFLECT2" -name '*_test.go' -delete
  touch "$V_REFLECT2/.debian-1.0.2"
fi

export GOPATH GO111MODULE=off CGO_ENABLED=0
unset GOFLAGS
export GOCACHE=$WORK/gocache
export GOMAXPROCS=${GOMAXPROCS:-$(nproc)}
cd "$GOPATH/src/k8s.io/kubernetes"

# --- 5. generated OpenAPI definitions (the tarball lacks pkg/generated/openapi) -------------------------
OPENAPI=pkg/generated/openapi/zz_generated.openapi.go
if [[ ! -s $OPENAPI ]]; then
  log "building openapi-gen"
  nice go build -o "$GOPATH/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  log "collecting packages tagged +k8s:openapi-gen="
  # as upstream's build/root/Makefile.generated_files (KUBE_OPENAPI_TAG_FILES): every Go file carrying a
  # '// +k8s:' tag, in every package but code-generator's examples and sample-apiserver
  pkgs=$(grep -rl --include='*.go' -E '^// *\+k8s:' pkg cmd plugin staging/src 2>/dev/null \
    | xargs grep -l '+k8s:openapi-gen=' | xargs -n1 dirname | sort -u \
    | grep -v -e '^staging/src/k8s.io/code-generator/' -e '^staging/src/k8s.io/sample-apiserver/' \
    | sed -e 's#^staging/src/##' -e 's#^\(pkg\|cmd\|plugin\)/#k8s.io/kubernetes/\1/#' \
    | sort -u | paste -sd, -)
  [[ -n $pkgs ]] || die "no packages tagged +k8s:openapi-gen= found"
  log "running openapi-gen over $(tr ',' '\n' <<<"$pkgs" | wc -l) packages"
  mkdir -p pkg/generated/openapi
  boiler=hack/boilerplate/boilerplate.generatego.txt
  [[ -f $boiler ]] || { boiler=$WORK/boilerplate.txt; : >"$boiler"; }
  nice "$GOPATH/bin/openapi-gen" \
    --input-dirs "$pkgs" \
    --output-package k8s.io/kubernetes/pkg/generated/openapi \
    --output-base "$GOPATH/src" \
    --output-file-base zz_generated.openapi \
    --go-header-file "$boiler" \
    --report-filename "$WORK/openapi-violations.txt" \
    >"$WORK/openapi-gen.log" 2>&1 || { tail -30 "$WORK/openapi-gen.log" >&2; die "openapi-gen failed"; }
  [[ -s $OPENAPI ]] || die "openapi-gen wrote no $OPENAPI"
fi

# --- 6. build --------------------------------------------------------------------------------------------
LDFLAGS="-s -w"
# GOPATH mode: the vendored packages link as k8s.io/kubernetes/vendor/...
for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=20"
  LDFLAGS+=" -X $p.gitTreeState=clean -X $p.buildDate=2021-01-13T13:20:00Z"
done
for cmd in kube-apiserver kube-controller-manager; do
  if ! "$BIN/$cmd" --version 2>/dev/null | grep -q "$KUBE_VERSION"; then
    log "go build cmd/$cmd (several minutes on 2 cores)"
    nice go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/$cmd.tmp" "./cmd/$cmd"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  fi
done

have_bins || die "built binaries do not answer --version with $KUBE_VERSION"
log "done in $(( $(date +%s) - START )) s:"
for b in etcd kube-apiserver kube-controller-manager; do
  printf '  %s: %s\n' "$b" "$("$BIN/$b" --version 2>&1 | head -1)" >&2
done
echo "kube binaries ready in $BIN ($KUBE_VERSION)"
