"""CBAM Grad-CAM Studio: see where ResNet50 and CBAM-ResNet50 look, and how attention changes it."""

__version__ = "0.1.0"
