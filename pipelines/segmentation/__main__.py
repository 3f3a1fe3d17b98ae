"""``python -m pipelines.segmentation``: the command line of ``cli.py``."""

import sys

from pipelines.segmentation.cli import main

sys.exit(main())
