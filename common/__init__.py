"""Foundations shared by ``train/`` and ``pipelines/``: reading images and checkpoints.

Both sides must read an image and a checkpoint's preprocessing the same way, or a model
would be trained on one picture and served another. These modules hold no training or
inference logic, so sharing them keeps the one-way flow: the checkpoint directory stays
the only contract between ``train/`` and ``pipelines/``.
"""
