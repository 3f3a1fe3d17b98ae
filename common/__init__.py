"""What ``train/`` and ``pipelines/`` must read the same way: the checkpoint contract and its rules.

The checkpoint directory is the only contract between training and inference, and it is
written once, here: the names of its files and config keys (``checkpoint_files``), the reader
and writer of each file the project adds (``calibration``, ``segmentation_rules``), the
post-processing rules that training fits and inference applies, the segmentation score both
report, and how images and preprocessing are read. Training never imports inference nor the
other way round; both import this package, which imports neither.
"""
