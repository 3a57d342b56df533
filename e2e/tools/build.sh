#!/usr/bin/env bash
# build.sh builds the control plane used by the end-to-end tests — etcd,
# kube-apiserver and kube-controller-manager — from the Go module proxy, into a
# cache directory outside the repository:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/kubedefender/controlplane-<key>/bin/
#
# <key> names the pinned Kubernetes and etcd versions, the Go version, and a hash
# of the tool modules (go.mod, go.sum, main.go files) and of the link flags, so a
# new pin gets a new directory and an unchanged pin is never rebuilt.
#
# Usage:
#   e2e/tools/build.sh           build if needed; print the bin dir as the last stdout line
#   e2e/tools/build.sh --check   build nothing; print the bin dir, exit 1 if it is not built
#   e2e/tools/build.sh --print-dir   print the bin dir, whether built or not
#
# Logs go to stderr. A cold build takes about 10 minutes on 2 cores; a cached run
# well under a second. Concurrent runs serialise on a lock file.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kube_mod="${here}/kube"
etcd_mod="${here}/etcd"

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() {
	printf 'build.sh: ERROR: %s\n' "$*" >&2
	exit 1
}

mode="build"
case "${1:-}" in
"") ;;
--check) mode="check" ;;
--print-dir) mode="print" ;;
-h | --help)
	sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*) die "unknown argument '$1' (want --check, --print-dir or nothing)" ;;
esac

command -v go >/dev/null 2>&1 || die "go is not on PATH"

# mod_version MODFILE MODULE prints the version MODFILE requires of MODULE.
mod_version() {
	awk -v m="$2" '($1 == m && $2 ~ /^v/) {print $2; exit} ($1 == "require" && $2 == m) {print $3; exit}' "$1"
}

k8s_version="$(mod_version "${kube_mod}/go.mod" k8s.io/kubernetes)"
etcd_version="$(mod_version "${etcd_mod}/go.mod" go.etcd.io/etcd/server/v3)"
[[ -n "${k8s_version}" ]] || die "failed to read the k8s.io/kubernetes version from ${kube_mod}/go.mod"
[[ -n "${etcd_version}" ]] || die "failed to read the go.etcd.io/etcd/server/v3 version from ${etcd_mod}/go.mod"

# Version stamps, so clients (kubectl, discovery) do not see v0.0.0.
k8s_minor="${k8s_version#v*.}"
k8s_minor="${k8s_minor%%.*}"
k8s_major="${k8s_version#v}"
k8s_major="${k8s_major%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X ${pkg}.gitVersion=${k8s_version}"
	ldflags+=" -X ${pkg}.gitMajor=${k8s_major}"
	ldflags+=" -X ${pkg}.gitMinor=${k8s_minor}"
	ldflags+=" -X ${pkg}.gitTreeState=clean"
	ldflags+=" -X ${pkg}.gitCommit=module-proxy-${k8s_version}"
	ldflags+=" -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done

go_version="$(go env GOVERSION)"
hash="$(
	cd "${here}"
	{
		find kube etcd -type f \( -name go.mod -o -name go.sum -o -name main.go \) | LC_ALL=C sort | xargs sha256sum
		printf '%s\n%s\n' "${ldflags}" "${go_version}"
	} | sha256sum | cut -c1-12
)"
key="k8s-${k8s_version}-etcd-${etcd_version}-${go_version}-${hash}"
cache_root="${XDG_CACHE_HOME:-${HOME}/.cache}/kubedefender"
dir="${cache_root}/controlplane-${key}"
bin="${dir}/bin"
binaries=(etcd kube-apiserver kube-controller-manager)

built() {
	[[ -f "${dir}/.complete" ]] || return 1
	local b
	for b in "${binaries[@]}"; do
		[[ -x "${bin}/${b}" ]] || return 1
	done
}

case "${mode}" in
print)
	echo "${bin}"
	exit 0
	;;
check)
	if built; then
		echo "${bin}"
		exit 0
	fi
	log "control plane ${key} is not built; run: bash ${here}/build.sh"
	echo "${bin}"
	exit 1
	;;
esac

if built; then
	log "cached: ${bin}"
	echo "${bin}"
	exit 0
fi

mkdir -p "${cache_root}"
exec 9>"${cache_root}/build.lock"
if ! flock -n 9; then
	log "another build holds ${cache_root}/build.lock; waiting"
	flock 9
fi
if built; then # built by whoever held the lock
	log "cached: ${bin}"
	echo "${bin}"
	exit 0
fi

staging="$(mktemp -d "${cache_root}/.build-${key}.XXXXXX")"
trap 'rm -rf "${staging}"' EXIT
chmod 755 "${staging}"
mkdir -p "${staging}/bin"

export GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
start=${SECONDS}

log "building etcd ${etcd_version} (under a minute)"
(cd "${etcd_mod}" && go build -trimpath -o "${staging}/bin/etcd" .) >&2 ||
	die "failed to build etcd ${etcd_version} in ${etcd_mod}; see the go output above"

log "building kube-apiserver and kube-controller-manager ${k8s_version} (about 10 minutes on a cold cache)"
(cd "${kube_mod}" && go build -trimpath -ldflags "${ldflags}" -o "${staging}/bin/" ./kube-apiserver ./kube-controller-manager) >&2 ||
	die "failed to build kube-apiserver/kube-controller-manager ${k8s_version} in ${kube_mod}; see the go output above"

"${staging}/bin/kube-apiserver" --version >&2 || die "failed to run the freshly built kube-apiserver"

rm -rf "${dir}"
mkdir -p "$(dirname "${dir}")"
printf 'k8s %s\netcd %s\n%s\nbuilt %s in %ss\n' "${k8s_version}" "${etcd_version}" "${go_version}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((SECONDS - start))" >"${staging}/.complete"
mv "${staging}" "${dir}"
trap - EXIT
log "built ${key} in $((SECONDS - start))s"
echo "${bin}"
