"""A command's life: its log level, and its exit code (0, or 2 with one line on stderr)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import datasets
import torch
import transformers

from ..trainer.callbacks import TrainingDivergedError
from .errors import ConfigError

__all__ = ["run_command", "set_verbosity"]


def run_command(prog: str, run: Callable, parse: Callable, argv: list[str] | None,
                input_errors: tuple[type[Exception], ...] = ()) -> int:
    """``run(*parse(argv))`` as a script's exit code: 0, or 2 with one line on stderr for bad input (a
    `ConfigError` or one of `input_errors`) or a diverged run. Ends the process group a distributed run opened."""
    try:
        run(*parse(argv))
        return 0
    except SystemExit as exc:  # argparse: --help, or a usage error it has printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    except (ConfigError, TrainingDivergedError, *input_errors) as exc:
        if int(os.environ.get("RANK", "0")) == 0:  # every process meets the same bad input: say it once
            print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def set_verbosity(level: int) -> None:
    """The log level of transformers, datasets and this package (whose warnings, e.g. a capped max_seq_length,
    go to stderr like theirs)."""
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(level)
    logger = logging.getLogger("adasam_hf")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[adasam_hf] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
