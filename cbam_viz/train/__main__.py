"""`python -m cbam_viz.train` and `torchrun -m cbam_viz.train`."""

import sys

from cbam_viz.train import main

sys.exit(main())
