# CBAM Grad-CAM Studio, CPU only:
#   docker build -t cbam-studio . && docker run --rm -p 7860:7860 cbam-studio
# The bundled weights (weights/*.safetensors) are baked in when present at build time; without them the
# container exits at start with a message saying which checkpoint is missing.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    MPLCONFIGDIR=/tmp/matplotlib

# An unprivileged user (uid 10001) to run the app (the code and weights below stay root-owned and read-only to it).
RUN useradd --no-log-init --create-home --uid 10001 --shell /usr/sbin/nologin studio

WORKDIR /app

# CPU-only PyTorch from the PyTorch CPU index first (no CUDA libraries: a far smaller image); the
# torch==2.14.1 / torchvision==0.29.1 pins of requirements.txt are then met by these +cpu builds, so the
# second install adds the rest (gradio, grad-cam with opencv-python-headless: no libGL or glib needed).
COPY requirements.txt ./
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1+cpu torchvision==0.29.1+cpu \
    && pip install --no-cache-dir -r requirements.txt \
    && python -c "import cv2, torch, torchvision; assert torch.version.cuda is None, torch.__version__"

# The app, its package, the example scenes and the bundled weights (.dockerignore lists what else stays out).
COPY . ./

USER 10001
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('GRADIO_SERVER_PORT', '7860'), timeout=8)"]

# Listens on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (0.0.0.0:7860 above); extra flags go after the image name
# only with an explicit command, e.g. `docker run IMAGE python app.py --device cpu`.
CMD ["python", "app.py"]
