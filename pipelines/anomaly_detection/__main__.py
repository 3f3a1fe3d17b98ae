"""``python -m pipelines.anomaly_detection``: the command line of ``cli.py``."""

import sys

from pipelines.anomaly_detection.cli import main

sys.exit(main())
