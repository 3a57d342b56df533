# syntax=docker/dockerfile:1.7
# Build: docker build --build-arg VERSION=$(git describe --tags --always) -t kubedefender .
# (No Docker engine runs on the development machines; CI checks this file's
# shape in TestDockerfile, not by building it.)

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
ARG VERSION=v0.0.0-dev
ARG COMMIT=unknown
ARG DATE=unknown
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath \
      -ldflags "-s -w -X github.com/kubedefender/kubedefender/version.Version=${VERSION} -X github.com/kubedefender/kubedefender/version.Commit=${COMMIT} -X github.com/kubedefender/kubedefender/version.Date=${DATE}" \
      -o /out/kubedefender ./cmd/kubedefender

# A static binary needs no libc: distroless/static carries only CA certificates,
# tzdata and a nonroot user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kubedefender /usr/local/bin/kubedefender
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubedefender"]
CMD ["serve", "--help"]
