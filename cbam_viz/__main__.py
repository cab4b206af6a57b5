"""`python -m cbam_viz ...` entry point."""

import sys

from cbam_viz.cli import main

sys.exit(main())
