#!/usr/bin/env bash
# build.sh builds the helm client the chart tests use (e2e/helm_test.go) from
# the Go module proxy, at the version this module requires, into
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/kubedefender/tools/helm-<version>/helm
#
# with the same version stamps as helm's own release build (helm's version,
# and the Kubernetes version helm template assumes, from client-go's).
# A cached helm is never rebuilt. Prints the binary's path as the last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() {
	printf 'helm build.sh: ERROR: %s\n' "$*" >&2
	exit 1
}
command -v go >/dev/null 2>&1 || die "go is not on PATH"

mod_version() {
	awk -v m="$1" '($1 == m && $2 ~ /^v/) {print $2; exit} ($1 == "require" && $2 == m) {print $3; exit}' "${here}/go.mod"
}
version="$(mod_version helm.sh/helm/v3)"
client_go="$(mod_version k8s.io/client-go)"
[[ -n "${version}" ]] || die "failed to read the helm.sh/helm/v3 version from ${here}/go.mod"
[[ -n "${client_go}" ]] || die "failed to read the k8s.io/client-go version from ${here}/go.mod"
k8s_minor="${client_go#v0.}"
k8s_minor="${k8s_minor%%.*}"

out="${XDG_CACHE_HOME:-${HOME}/.cache}/kubedefender/tools/helm-${version}/helm"
if [[ -x "${out}" ]]; then
	echo "${out}"
	exit 0
fi
mkdir -p "$(dirname "${out}")"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${version}"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
	ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${k8s_minor}"
done
printf 'helm build.sh: building helm %s (a few minutes on a cold cache)\n' "${version}" >&2
(cd "${here}" && GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 \
	go build -trimpath -ldflags "${ldflags}" -o "${out}.tmp" helm.sh/helm/v3/cmd/helm) >&2 ||
	die "failed to build helm ${version} in ${here}; see the go output above"
mv "${out}.tmp" "${out}"
"${out}" version --short >&2
echo "${out}"
