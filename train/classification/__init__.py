"""Training an image classifier (single- or multi-label) with the Trainer: ``python -m train.classification.train``."""
