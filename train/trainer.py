"""The Trainer both training scripts use: the stock one with two fixes and a weighted sampler."""

from __future__ import annotations

import logging

import torch
from transformers import Trainer

logger = logging.getLogger("vispect.train")


class VispectTrainer(Trainer):
    """``transformers.Trainer`` that reloads checkpoints correctly and can sample by weight.

    Args:
        sample_weights: One weight per training example; when given (and on one process)
            examples are drawn with replacement in proportion to them, e.g. to see rare
            classes as often as common ones.
    """

    # Our losses are per-batch means; let the Trainer divide them for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, sample_weights: list[float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample_weights = sample_weights

    # transformers 5.23 saves checkpoints under the legacy parameter names (e.g. ViT's
    # "attention.attention.query") but its Trainer reloads them with a plain, non-strict
    # load_state_dict, which silently skips every renamed tensor when resuming or loading
    # the best model. from_pretrained applies the renames, so weights are loaded through it.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_weights(resume_from_checkpoint)

    def _load_best_model(self):
        logger.info("Loading best model from %s (%s).", self.state.best_model_checkpoint, self.state.best_metric)
        self._load_weights(self.state.best_model_checkpoint)

    def _load_weights(self, checkpoint: str) -> None:
        model = self.accelerator.unwrap_model(self.model)
        saved = type(model).from_pretrained(checkpoint, local_files_only=True, trust_remote_code=False)
        model.load_state_dict(saved.state_dict(), strict=True)

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is None or self.args.world_size > 1:
            return super()._get_train_sampler(train_dataset)
        generator = torch.Generator().manual_seed(self.args.seed)
        return torch.utils.data.WeightedRandomSampler(
            self.sample_weights, num_samples=len(self.sample_weights), replacement=True, generator=generator
        )
