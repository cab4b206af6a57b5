"""CBAM Grad-CAM Studio: where ResNet50 and CBAM-ResNet50 look, side by side, and how CBAM's attention changes it.

    python app.py                       # http://127.0.0.1:7860 with the bundled weights (cbam_viz.io.weights)
    python app.py --host 0.0.0.0 --port 8080 --baseline a.safetensors --cbam b.pth --device cuda

The launcher that `make run`, Docker and Spaces use; `cbam-viz app` does the same. Options and environment
variables: `cbam_viz.app.launch`.
"""

import sys

from cbam_viz.app.launch import main

if __name__ == "__main__":
    sys.exit(main())
