# No `# syntax=` line: the engine's built-in Dockerfile frontend runs this
# file, cache mounts included. With one, pulumi-docker's build fails on a
# Docker 20.10 engine (the frontend image cannot read the build context the
# provider uploads once: "failed to load cache key ... context not found"),
# and it needs the frontend image from a registry. A test in
# infra/internal/stack keeps it out.
#
# The Relaygate image: gateway, upstream-sim and gpu-probe, built from
# ./service/cmd/... . The infra program builds it for linux/amd64 and runs the
# gateway as `gateway -config /etc/relaygate/gateway.yaml` (the default CMD
# below); the local stack also runs upstream-sim from it.
#
# Base images are pinned by tag. They should be pinned by digest too
# (name:tag@sha256:...), but a digest can only be looked up from a registry and
# this file was written offline: run `docker buildx imagetools inspect <image>`
# and append the digest before relying on reproducible builds.

ARG GO_IMAGE=golang:1.26-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/base-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
# No `go mod download`: the module also holds the Pulumi program, whose SDKs
# the image does not need. `go build` fetches only the modules the binaries
# import, and the cache mounts keep them across builds.
COPY go.mod go.sum ./
COPY service/ service/
# cgo stays on: go-nvml reaches libnvidia-ml.so.1 through dlopen, which the
# NVIDIA container toolkit mounts into the container at run time.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=1 go build -trimpath -buildvcs=false -ldflags='-s -w' \
        -o /out/ ./service/cmd/...
# The ledger's spill directory (config.DefaultLedgerSpillDir), empty. The
# infra program mounts a named volume there; a new volume takes the
# ownership of the image's directory, so the gateway (uid 65532) can write
# to it. The runtime image has no shell to mkdir with: it is copied.
RUN mkdir -p /out-ledger/var/lib/relaygate/ledger

# distroless/base has glibc (for the cgo binaries and for the driver library
# the toolkit injects), CA certificates and tzdata, and no shell; :nonroot runs
# as uid 65532.
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/ /usr/local/bin/
COPY --from=build --chown=65532:65532 /out-ledger/var/lib/relaygate/ /var/lib/relaygate/
# Tell the NVIDIA runtime to expose every GPU with only the management
# library (NVML): the gateway reads GPU telemetry, it does not run kernels.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility
USER nonroot:nonroot
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/gateway", "-healthcheck"]
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["-config", "/etc/relaygate/gateway.yaml"]
