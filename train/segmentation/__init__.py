"""Training a defect segmenter (SegFormer) and fitting its post-processing: ``python -m train.segmentation.train``."""
