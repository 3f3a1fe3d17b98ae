"""``python -m pipelines.classification``: the command line of ``cli.py``."""

import sys

from pipelines.classification.cli import main

sys.exit(main())
