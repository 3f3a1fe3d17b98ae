# The app on a CPU, served on port 7860:
#
#   docker build -t vispect:cpu .
#   docker run --rm -p 7860:7860 vispect:cpu                     # http://127.0.0.1:7860
#   docker run --rm -p 7860:7860 -v ./models:/app/models vispect:cpu --classifier models/parts
#
# Arguments after the image name are app.py flags (see `--help`). Without Docker Hub, build on a
# local Debian base with podman: .ci/container.sh build (what CI does).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE}
ENV LANG=C.UTF-8 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    VISPECT_CACHE=/var/cache/vispect \
    VISPECT_DATA=/var/lib/vispect \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --gid 1000 app \
    && useradd --uid 1000 --gid app --create-home --shell /usr/sbin/nologin app \
    && install -d -o app -g app "$VISPECT_CACHE" "$VISPECT_DATA"

# PyPI's torch wheel for Linux depends on CUDA packages (several GB) that a CPU never uses. Its CUDA
# build links most of them, so `import torch` fails without them even on a CPU; these it does not
# link and leaves out here: triton (torch.compile's GPU kernels, ~940 MB), cuSOLVER, NVTX and the
# CUDA Python bindings. --build-arg LEAVE_OUT= installs everything pip resolves.
ARG LEAVE_OUT="triton nvidia-cusolver nvidia-nvtx cuda-bindings cuda-pathfinder"
# Of the CUDA packages that stay, torch links the main libraries; the other files in them are only
# opened by CUDA code, on first use: cuDNN's engine libraries, NVRTC's builtins, NVSHMEM's transports,
# profiler helpers, torch's CUDA linear algebra, and the C/C++ headers (~1.2 GB). PRUNE_CUDA=1
# deletes those (`import torch` is checked after); --build-arg PRUNE_CUDA=0 keeps them.
ARG PRUNE_CUDA=1
# pip's settings from the build machine, if it needs any (.ci/container.sh passes the host's).
# Build args show in the image history: never put credentials in them.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_CERT=
ARG PIP_DEFAULT_TIMEOUT=120
COPY requirements-serve.txt .ci/containers/pip_install_without.py /tmp/build/
# One layer, so that what is deleted (pip's cache, the pruned files) never takes space in the image.
RUN export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CACHE_DIR=/tmp/pip-cache \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/python /tmp/build/pip_install_without.py /tmp/build/requirements-serve.txt ${LEAVE_OUT} \
    && rm -rf /tmp/pip-cache /tmp/build \
    && if [ "$PRUNE_CUDA" = 1 ]; then \
         cd /opt/venv/lib/python3*/site-packages \
         && rm -rf nvidia/cudnn/lib/libcudnn_*.so.* nvidia/cu*/lib/libnvrtc.alt.so.* \
              nvidia/cu*/lib/libnvrtc-builtins*.so* nvidia/cu*/lib/libnvperf_*.so \
              nvidia/cu*/lib/libpcsamplingutil.so nvidia/cu*/lib/libcheckpoint.so nvidia/cu*/lib/libnvblas.so.* \
              nvidia/cu*/lib/libcufftw.so.* nvidia/cu*/lib/libcufile_rdma.so.* nvidia/nvshmem/lib/nvshmem_*.so.* \
              torch/lib/libtorch_cuda_linalg.so nvidia/*/include torch/include; \
       fi \
    && /opt/venv/bin/python -c "import torch, torchvision; print('torch', torch.__version__, torch.ones(2) @ torch.ones(2))"

WORKDIR /app
# Owned by root and read-only for the app user; __pycache__ is compiled here, not at run time.
COPY models models/
COPY examples examples/
COPY app.py ./
COPY api api/
# The Train tab's job runner; the training CLIs (train/, datasets, accelerate) are not in this serving image.
COPY jobs jobs/
COPY common common/
COPY pipelines pipelines/
COPY ui ui/
RUN python -m compileall -q app.py api common pipelines ui
USER 1000:1000
# Load every model once now (into $VISPECT_CACHE): the default classifier's conversion and the ONNX
# exports of models/ (the demo segmenter's takes minutes), so the container starts fast and its first
# Segment request does not wait; this also checks that torch, timm, transformers and onnxruntime work
# in the image. Then make the cache readable by any uid, for runtimes that pick their own (the
# conversion writes some files 0600).
RUN python -m pipelines.prepare && chmod -R a+rX "$VISPECT_CACHE"
# The inspection log (SQLite) and, with --store-images, the images: mount a volume to keep them.
VOLUME /var/lib/vispect
EXPOSE 7860
# Python as PID 1 ignores SIGTERM (no handler); SIGINT stops Gradio's server cleanly.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=8)"]
ENTRYPOINT ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
