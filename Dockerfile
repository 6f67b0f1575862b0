# syntax=docker/dockerfile:1
#
# cnnzoo images: one Dockerfile, four targets. Serving needs no PyTorch, so the server has
# images of its own without it; exporting, training and jobs need the torch images.
#
#   cpu (default)  python:3.11-slim + the CPU build of torch (small, runs anywhere)
#     docker build -t cnnzoo:cpu .
#   gpu            nvidia/cuda (CUDA 13 base) + torch's CUDA 13 build from PyPI, whose nvidia-*
#                  wheels bring cuDNN/cuBLAS; ONNX Runtime's CUDA provider uses the same libraries
#     docker build --target gpu -t cnnzoo:gpu .
#   server         python:3.11-slim + cnnzoo without torch: `cnnzoo serve` (and classify,
#                  explain-export, health) on ONNX Runtime
#     docker build --target server -t cnnzoo:server .
#   gpu-server     nvidia/cuda + cnnzoo without torch + the CUDA 13 libraries ONNX Runtime's CUDA
#                  provider loads (its `cuda` and `cudnn` extras, and cuBLAS)
#     docker build --target gpu-server -t cnnzoo:gpu-server .
#
# Each target builds a virtualenv in a throw-away stage and copies only /opt/venv into the final
# image (no compiler, no pip cache, no source tree), plus the shipped examples (example digits and
# job files, a few hundred KB) at /opt/cnnzoo/examples, e.g.
#   docker compose run --rm worker job /opt/cnnzoo/examples/jobs/lenet5-digits.toml \
#       --out /results/lenet5-digits
# The container runs as an unprivileged user (uid/gid 10001). Nothing secret is baked in: every
# setting comes from the environment at run time.
#
# Build arguments:
#   PYTHON_IMAGE     base of the cpu target
#   CUDA_IMAGE       base of the gpu target (needs a host driver that supports CUDA 13, R580+)
#   TORCH_INDEX_URL  where the cpu target gets torch; the default, PyTorch's CPU wheel index, needs
#                    internet access during the build. Behind a PyPI-only mirror pass
#                    --build-arg TORCH_INDEX_URL=<the mirror's simple index>: that installs
#                    torch's CUDA build, which works on CPU too, in an image several GB larger.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# gpu: CUDA base with the distribution's Python (3.12 on Ubuntu 24.04)
# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The distribution's security updates are wanted, so its packages are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM gpu-base AS gpu-build
# torch first and pinned, so the project's own install never re-resolves it
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
COPY . /src
RUN /opt/venv/bin/pip install --no-cache-dir '/src[torch]'

FROM gpu-base AS gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=gpu-build /opt/venv /opt/venv
COPY examples/ /opt/cnnzoo/examples/
# ONNX Runtime's CUDA provider dlopens cuDNN/cuBLAS/cuFFT by soname: register the nvidia-* wheel
# folders (the same libraries torch uses) with the dynamic loader instead of shipping a second copy.
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' | sort \
       > /etc/ld.so.conf.d/cnnzoo-nvidia.conf \
    && ldconfig \
    && groupadd --system --gid 10001 cnnzoo \
    && useradd --system --uid 10001 --gid cnnzoo --create-home --home-dir /home/cnnzoo \
       --shell /usr/sbin/nologin cnnzoo \
    && install -d -o 10001 -g 10001 /models /jobs /results /data
# (NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES come with the nvidia/cuda base)
ENV PATH=/opt/venv/bin:$PATH \
    CNNZOO_DATA=/data
WORKDIR /home/cnnzoo
USER 10001:10001
RUN cnnzoo --version
EXPOSE 8001 8002
ENTRYPOINT ["cnnzoo"]
CMD ["--help"]

FROM gpu-base AS gpu-server-build
RUN python3 -m venv /opt/venv
COPY . /src
# the pins are pyproject's (onnxruntime-gpu) and the CUDA 13 wheels it names in its extras
RUN /opt/venv/bin/pip install --no-cache-dir /src 'onnxruntime-gpu[cuda,cudnn]==1.31.1' \
       'nvidia-cublas>=13,<14'

FROM gpu-base AS gpu-server
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=gpu-server-build /opt/venv /opt/venv
COPY examples/ /opt/cnnzoo/examples/
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' | sort \
       > /etc/ld.so.conf.d/cnnzoo-nvidia.conf \
    && ldconfig \
    && groupadd --system --gid 10001 cnnzoo \
    && useradd --system --uid 10001 --gid cnnzoo --create-home --home-dir /home/cnnzoo \
       --shell /usr/sbin/nologin cnnzoo \
    && install -d -o 10001 -g 10001 /models /jobs /results /data
ENV PATH=/opt/venv/bin:$PATH \
    CNNZOO_DATA=/data
WORKDIR /home/cnnzoo
USER 10001:10001
# the server must not need torch: importing it here fails the build
RUN cnnzoo --version && ! python -c 'import torch' 2>/dev/null
EXPOSE 8001 8002
ENTRYPOINT ["cnnzoo"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# server: python:3.11-slim + cnnzoo without torch
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS server-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY . /src
RUN /opt/venv/bin/pip install --no-cache-dir /src

FROM ${PYTHON_IMAGE} AS server
COPY --from=server-build /opt/venv /opt/venv
COPY examples/ /opt/cnnzoo/examples/
RUN groupadd --system --gid 10001 cnnzoo \
    && useradd --system --uid 10001 --gid cnnzoo --create-home --home-dir /home/cnnzoo \
       --shell /usr/sbin/nologin cnnzoo \
    && install -d -o 10001 -g 10001 /models /jobs /results /data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CNNZOO_DATA=/data
WORKDIR /home/cnnzoo
USER 10001:10001
RUN cnnzoo --version && ! python -c 'import torch' 2>/dev/null
EXPOSE 8001 8002
ENTRYPOINT ["cnnzoo"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# cpu (the default target: keep it last)
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
       torch==2.14.1 torchvision==0.29.1
COPY . /src
RUN /opt/venv/bin/pip install --no-cache-dir '/src[torch]'

FROM ${PYTHON_IMAGE} AS cpu
COPY --from=cpu-build /opt/venv /opt/venv
COPY examples/ /opt/cnnzoo/examples/
RUN groupadd --system --gid 10001 cnnzoo \
    && useradd --system --uid 10001 --gid cnnzoo --create-home --home-dir /home/cnnzoo \
       --shell /usr/sbin/nologin cnnzoo \
    && install -d -o 10001 -g 10001 /models /jobs /results /data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CNNZOO_DATA=/data
WORKDIR /home/cnnzoo
USER 10001:10001
RUN cnnzoo --version
EXPOSE 8001 8002
ENTRYPOINT ["cnnzoo"]
CMD ["--help"]
