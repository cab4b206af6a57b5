"""Class activation maps: the engine that runs both models (exact fast Grad-CAM, grad-cam's methods), rendering,
and the paper's figures."""
