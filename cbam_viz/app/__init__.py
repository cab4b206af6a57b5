"""The web app: the studio (models and caches), what the page shows, the figure export, and the Gradio page.

`app.py` at the repository root parses the command line and launches `ui.build_demo`.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before any module here imports Gradio: no phoning home
