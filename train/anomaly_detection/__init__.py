"""Train an anomaly detector (PatchCore) on good images only; see :mod:`train.anomaly_detection.train`."""
