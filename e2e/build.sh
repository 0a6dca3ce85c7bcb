#!/usr/bin/env bash
# Builds the real-cluster test binaries from the Go module proxy, once per set of versions:
#   e2e/build.sh               build what is missing, print the bin folder on the last line
#   e2e/build.sh --regenerate  rewrite e2e/kubernetes/go.mod from the release's own go.mod
# Cache: ${MELANGE_E2E_CACHE:-~/.cache/melange/e2e}/<versions>/bin (outside the checkout).
# Binaries: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (one Kubernetes
# release, through the wrapper module in e2e/kubernetes), kwok, helm, karpenter-kwok (Karpenter's
# KWOK provider) and Karpenter's CRDs (crds/); the Prometheus Operator's PodMonitor CRD
# (monitoring-crds-<version>/, generated from its API module by controller-gen).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

key="k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_karpenter-${KARPENTER_VERSION}_r${RECIPE}"
root="${MELANGE_E2E_CACHE:-$HOME/.cache/melange/e2e}/$key"
bin="$root/bin"
mkdir -p "$bin" "$root/crds"

log() { printf 'e2e/build.sh: %s\n' "$*" >&2; }

# run NAME CMD...: runs a build step, printing its time; on failure prints the command and its output.
run() {
  local name=$1; shift
  local out start=$SECONDS
  out=$(mktemp)
  log "building $name"
  if ! "$@" >"$out" 2>&1; then
    log "FAILED building $name: $*"
    cat "$out" >&2
    rm -f "$out"
    exit 1
  fi
  rm -f "$out"
  log "built $name in $((SECONDS - start)) s"
}

regenerate() {
  local mod
  mod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  {
    echo "// Wrapper module: builds the Kubernetes control-plane binaries of one release from the Go module"
    echo "// proxy. k8s.io/kubernetes replaces its staging modules with local paths, so it cannot be"
    echo "// go-installed; here each staging module is replaced with its published $KUBE_STAGING_VERSION"
    echo "// (the list is the release's own go.mod; e2e/build.sh --regenerate rewrites this file)."
    echo "module melange.local/e2e/kubernetes"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    sed -n '/^replace (/,/^)/p' "$mod" | awk -v v="$KUBE_STAGING_VERSION" '/=>/ {print "\t" $1 " => " $1 " " v}'
    echo ")"
  } >"$here/kubernetes/go.mod"
  (cd "$here/kubernetes" && rm -f go.sum && GOFLAGS=-mod=mod go list -deps k8s.io/kubernetes/cmd/kube-apiserver >/dev/null)
  log "rewrote e2e/kubernetes/go.mod for $KUBE_VERSION"
}

if [[ ${1:-} == --regenerate ]]; then regenerate; exit 0; fi

total_start=$SECONDS
built=0

kube_ldflags() {
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  echo "$flags"
}

kube_cmds=()
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  [[ -x $bin/$cmd ]] || kube_cmds+=("k8s.io/kubernetes/cmd/$cmd")
done
if ((${#kube_cmds[@]})); then
  run "Kubernetes $KUBE_VERSION: ${kube_cmds[*]##*/}" bash -c '
    cd "$1" && shift && out=$1 && shift && ldflags=$1 && shift &&
    tmp=$(mktemp -d) &&
    GOFLAGS="$GOFLAGS -mod=mod" go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$tmp/" "$@" &&
    mv "$tmp"/* "$out/" && rmdir "$tmp"' _ "$here/kubernetes" "$bin" "$(kube_ldflags)" "${kube_cmds[@]}"
  built=1
fi

if [[ ! -x $bin/etcd ]]; then
  run "etcd $ETCD_VERSION" bash -c '
    cd "$1" && GOFLAGS="$GOFLAGS -mod=mod" go build -trimpath -ldflags "-s -w" -o "$2.tmp" go.etcd.io/etcd/server/v3 &&
    mv "$2.tmp" "$2"' _ "$here/etcd" "$bin/etcd"
  built=1
fi

# go_install NAME PKG@VERSION LDFLAGS: modules without local replaces install as they are.
go_install() {
  local name=$1 pkg=$2 ldflags=$3 tmp
  tmp=$(mktemp -d)
  run "$name ($pkg)" env GOBIN="$tmp" go install -trimpath -ldflags "-s -w $ldflags" "$pkg"
  mv "$tmp"/* "$bin/$name"
  rmdir "$tmp"
  built=1
}

[[ -x $bin/kwok ]] || go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" ""
if [[ ! -x $bin/helm ]]; then
  minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
fi
[[ -x $bin/karpenter-kwok ]] || go_install karpenter-kwok "sigs.k8s.io/karpenter/kwok@$KARPENTER_VERSION" ""

# The KWOK controller's stages (what kwokctl's "fast" nodes and pods use): nodes initialised and
# kept alive by lease, pods Ready once bound, completed and deleted like a kubelet would.
if [[ ! -f $root/kwok-stages/.complete ]]; then
  src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  mkdir -p "$root/kwok-stages"
  cp "$src"/kustomize/stage/node/fast/node-initialize.yaml \
     "$src"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
     "$src"/kustomize/stage/pod/fast/pod-ready.yaml "$src"/kustomize/stage/pod/fast/pod-complete.yaml \
     "$src"/kustomize/stage/pod/fast/pod-delete.yaml "$root/kwok-stages/"
  chmod u+w "$root"/kwok-stages/*.yaml
  touch "$root/kwok-stages/.complete"
fi

if [[ ! -f $root/crds/.complete ]]; then
  src=$(go mod download -json "sigs.k8s.io/karpenter@$KARPENTER_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  cp "$src"/kwok/charts/crds/*.yaml "$src"/kwok/apis/crds/*.yaml "$root/crds/"
  chmod u+w "$root"/crds/*.yaml
  touch "$root/crds/.complete"
fi

monitoring="$root/monitoring-crds-$PROMETHEUS_OPERATOR_VERSION"
if [[ ! -f $monitoring/.complete ]]; then
  run "PodMonitor CRD (prometheus-operator $PROMETHEUS_OPERATOR_VERSION, controller-gen $CONTROLLER_GEN_VERSION)" bash -c '
    set -e
    tmp=$(mktemp -d)
    GOBIN="$tmp/bin" go install "sigs.k8s.io/controller-tools/cmd/controller-gen@$2"
    src=$(go mod download -json "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring@$1" |
          sed -n "s/.*\"Dir\": \"\(.*\)\",/\1/p")
    cp -r "$src" "$tmp/apis" && chmod -R u+w "$tmp/apis"
    (cd "$tmp/apis" && GOFLAGS=-mod=mod "$tmp/bin/controller-gen" crd paths=./v1/... output:crd:dir="$tmp/crds")
    mkdir -p "$3"
    cp "$tmp/crds/monitoring.coreos.com_podmonitors.yaml" "$3/"
    chmod -R u+w "$tmp" && rm -rf "$tmp"
    touch "$3/.complete"' _ "$PROMETHEUS_OPERATOR_VERSION" "$CONTROLLER_GEN_VERSION" "$monitoring"
  built=1
fi

if ((built)); then
  log "done in $((SECONDS - total_start)) s; cache $(du -sh "$root" | cut -f1) in $root"
fi
echo "$bin"
