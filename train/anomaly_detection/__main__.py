"""``python -m train.anomaly_detection``: the command line of ``train.py``."""

import sys

from train.anomaly_detection.train import main

sys.exit(main())
