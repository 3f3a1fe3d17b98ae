"""Command-line handling both training scripts share: flags, script defaults, resume or refuse.

Each script declares its argument dataclasses and its ``SCRIPT_DEFAULTS``; this module parses a
command line (or one ``.json`` file) into them with ``HfArgumentParser``, so every
``TrainingArguments`` flag works, and decides what an existing ``--output_dir`` means.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from common.checkpoint_files import CONFIG_FILE, TRAINER_STATE_FILE
from train.data import DataError

logger = logging.getLogger("vispect.train")


class ArgumentsError(ValueError):
    """A command line the script cannot run: unknown flag, bad value, or flags that contradict each other."""


class _Parser(HfArgumentParser):
    # argparse prints usage and exits on a bad value; raising lets the CLI print one sentence
    # and lets the app's Train tab check a command line before it starts a job.
    def error(self, message):
        raise ArgumentsError(message)


def parse_script_args(argument_classes: tuple, defaults: dict, argv: list[str] | None = None, *, prog: str) -> tuple:
    """Flags (or one .json file) -> one instance of each of ``argument_classes``, in order.

    Raises:
        ArgumentsError: an unknown flag, a value of the wrong type, or a check in an argument
            class's ``__post_init__`` failed; the message names the flag.
    """
    parser = _Parser(argument_classes, prog=prog)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            given = json.loads(Path(argv[0]).read_text())
            return parser.parse_dict({**script_defaults(given, defaults), **given})
        parser.set_defaults(**script_defaults(flags_given(argv), defaults))
        return parser.parse_args_into_dataclasses(args=argv)
    except ArgumentsError:
        raise
    except ValueError as error:  # __post_init__ checks, and flags no argument class knows
        raise ArgumentsError(str(error)) from error


def flags_given(argv: list[str]) -> dict[str, str]:
    """``--name value`` / ``--name=value`` pairs on the command line (value "" for lone flags)."""
    given = {}
    for i, word in enumerate(argv):
        if not word.startswith("--"):
            continue
        name, _, value = word[2:].partition("=")
        if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
        given[name] = value
    return given


def script_defaults(given: dict, base: dict) -> dict:
    """A script's defaults, with saving following a user-chosen evaluation schedule.

    The Trainer needs matching save and eval strategies to keep the best model; a user who
    only says ``--eval_strategy steps --eval_steps 50`` means "save on the same schedule".
    """
    defaults = dict(base)
    if not torch.cuda.is_available():
        # Without use_cpu, accelerate does not set up gloo under torchrun on a CPU-only
        # machine and every process silently trains alone; pinned memory only helps GPUs.
        defaults.update(use_cpu=True, dataloader_pin_memory=False)
    if "eval_strategy" in given and "save_strategy" not in given:
        defaults["save_strategy"] = given["eval_strategy"]
        if "eval_steps" in given and "save_steps" not in given:
            defaults["save_steps"] = given["eval_steps"]
    if given.get("eval_strategy") == "no" and "load_best_model_at_end" not in given:
        defaults["load_best_model_at_end"] = False
    return defaults


def last_complete_checkpoint(output: Path) -> str | None:
    """The newest ``checkpoint-N`` that the Trainer finished writing, or None.

    The Trainer writes ``trainer_state.json`` after the weights and optimizer, so a checkpoint
    without it was cut short (the process was killed while saving) and cannot be resumed from;
    the one before it can.
    """
    last = get_last_checkpoint(str(output))
    while last is not None and not (Path(last) / TRAINER_STATE_FILE).is_file():
        logger.warning("Skipping %s: it was not written to the end (no %s).", last, TRAINER_STATE_FILE)
        step = int(Path(last).name.split("-")[-1])
        older = [
            path
            for path in output.glob("checkpoint-*")
            if path.is_dir() and path.name.split("-")[-1].isdigit() and int(path.name.split("-")[-1]) < step
        ]
        last = str(max(older, key=lambda path: int(path.name.split("-")[-1]))) if older else None
    return last


def check_output_dir(training_args: TrainingArguments, overwrite: bool) -> str | None:
    """Resume from the last checkpoint if there is one; never overwrite a finished model silently.

    Returns:
        The checkpoint to resume from, or None to start fresh.

    Raises:
        DataError: ``--output_dir`` holds a finished model and ``overwrite`` is off.
    """
    output = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    if not output.is_dir():
        return None
    last = last_complete_checkpoint(output)
    if last is not None:
        logger.info("Resuming from %s (rerun with another --output_dir to start fresh).", last)
        return last
    if (output / CONFIG_FILE).exists() and not overwrite:
        raise DataError(
            f"--output_dir {output} already holds a trained model. Choose another --output_dir, "
            "or pass --overwrite_output_dir to replace it."
        )
    return None
