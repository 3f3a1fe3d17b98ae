"""Anomaly detection with a PatchCore detector trained on good images (``python -m train.anomaly_detection``).

``predict`` holds the inference class, ``records`` many files in batches and their CSV,
``render`` the map drawn over the image, ``registry`` the detectors the app offers (loaded on
first use); ``python -m pipelines.anomaly_detection`` (``cli``) is the command line over them.
"""

from pipelines.anomaly_detection.predict import AnomalyDetector, AnomalyResult
from pipelines.anomaly_detection.records import detect_files, write_results_csv

__all__ = ["AnomalyDetector", "AnomalyResult", "detect_files", "write_results_csv"]
