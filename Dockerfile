# CBAM Grad-CAM Studio, CPU only:
#   docker build -t cbam-studio . && docker run --rm -p 7860:7860 cbam-studio
# The bundled weights (weights/*.safetensors) are baked in when present at build time; without them the
# container exits at start with a message saying which checkpoint is missing.
#
# Build arguments (tests/test_docker.py builds with both where no registry or PyTorch index is reachable):
#   BASE_IMAGE       any Debian-based image with python3 (3.11) and its venv module; the default is the
#                    official slim image. Behind a proxy that re-signs TLS, use a base that trusts its CA.
#   TORCH_INDEX_URL  where torch and torchvision come from: empty (the default) takes them from pip's own index,
#                    whose build carries CUDA (still run on the CPU here); PyTorch's CPU wheel index (its address is
#                    on pytorch.org's install page) gives a far smaller image, and the build then checks for no CUDA.
#   PIP_INDEX_URL    optional: the index for everything else (pip reads it from the environment).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=
ARG PIP_INDEX_URL

# The venv gives every base the same `python` and a pip that may install (Debian's own python3 is
# externally managed); the full PATH does not depend on the base defining one.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    MPLCONFIGDIR=/tmp/matplotlib

# An unprivileged user (uid 10001) to run the app (the code and weights below stay root-owned and read-only to it).
RUN useradd --no-log-init --create-home --uid 10001 --shell /usr/sbin/nologin studio \
    && python3 -m venv /opt/venv

WORKDIR /app

# torch and torchvision first, from TORCH_INDEX_URL, at requirements.txt's pins (torch==2.14.1 also matches the
# CPU index's 2.14.1+cpu); the second install adds the rest (gradio, grad-cam with opencv-python-headless: no
# libGL or glib needed). From the CPU index, the build checks that no CUDA build slipped in.
COPY requirements.txt ./
RUN (if [ -n "${TORCH_INDEX_URL}" ]; then export PIP_INDEX_URL="${TORCH_INDEX_URL}"; fi \
        && pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1) \
    && pip install --no-cache-dir -r requirements.txt \
    && python -c "import cv2, torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && case "${TORCH_INDEX_URL}" in \
         */whl/cpu|*/whl/cpu/) python -c "import torch; assert torch.version.cuda is None, torch.__version__" ;; \
       esac

# The app, its package, the example scenes and the bundled weights (.dockerignore lists what else stays out).
COPY . ./

USER 10001
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('GRADIO_SERVER_PORT', '7860'), timeout=8)"]

# Listens on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (0.0.0.0:7860 above); extra flags go after the image name
# only with an explicit command, e.g. `docker run IMAGE python app.py --device cpu`.
CMD ["python", "app.py"]
