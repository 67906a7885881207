"""Checks made before a run trains, shared by `scripts/finetune.py` and `scripts/finetune_lm.py`.

A run that cannot finish should not start: an output folder that is a file or not writable would fail at the first
save, after the training it was meant to keep; a damaged checkpoint would fail after the data is tokenized, or, from
another optimizer, one step into training; a folder holding a previous run's results would be overwritten or
pruned. Each problem is a `ConfigError` whose message names the path or value and the way out, which the command
lines print as one line with exit code 2.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import ConfigError, first_line

__all__ = [
    "CheckpointError",
    "OutputDirError",
    "check_checkpoint_fits",
    "check_model_path",
    "check_output_dir",
    "checkpoint_problem",
    "fit_max_seq_length",
    "previous_run_files",
    "resolve_resume",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# What a finished or checkpointed run leaves in its output folder (the Trainer's names and ours).
RUN_FILES = ("results.json", "trainer_state.json", "model.safetensors", "adapter_model.safetensors",
             "pytorch_model.bin", "eval_predictions.tsv")
# The torch archives a checkpoint may hold; each is a zip file, whose directory sits at its end: a file cut short
# by a kill during the save has none.
ARCHIVES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "sam_layer_sampler.pt")
RESUME_LAST = ("last", "true")


class OutputDirError(ConfigError):
    """The output folder cannot take this run's results."""


class CheckpointError(ConfigError):
    """The checkpoint to resume from is missing, damaged, or does not fit this run."""


# --- the output folder ---------------------------------------------------------------------------------------


def check_output_dir(args) -> None:
    """`args.output_dir` is (or can become) a writable folder that holds no previous run, unless the run resumes
    or `args.overwrite_output_dir` allows it. TensorBoard's own folder (``$TENSORBOARD_LOGGING_DIR``) too."""
    if not str(args.output_dir or "").strip():
        raise OutputDirError(f"invalid output_dir: {args.output_dir!r} (name a folder)")
    out = Path(args.output_dir)
    _check_writable_folder("output_dir", out)
    previous = previous_run_files(out)
    if previous and not getattr(args, "overwrite_output_dir", False) and not args.resume_from_checkpoint:
        shown = ", ".join(previous[:3]) + (f" and {len(previous) - 3} more" if len(previous) > 3 else "")
        raise OutputDirError(
            f"output_dir {out} holds a previous run ({shown}): pass --overwrite_output_dir to write over it, "
            "--resume_from_checkpoint last to continue it, or another --output_dir"
        )
    tensorboard_dir = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if tensorboard_dir and "tensorboard" in (args.report_to or []):
        _check_writable_folder("TENSORBOARD_LOGGING_DIR", Path(tensorboard_dir).expanduser())


def previous_run_files(folder: Path) -> list[str]:
    """The names of a previous run's results and checkpoints in `folder`, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name in RUN_FILES or (p.is_dir() and CHECKPOINT_PATTERN.match(p.name)))


def _check_writable_folder(name: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"invalid {name}: {path} is a file, not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirError(f"invalid {name}: {path} cannot be made: {existing} is a file, not a folder")
    try:  # the one sure test of "can this process write here" (permissions, read-only mounts, /proc, ...)
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as exc:
        raise OutputDirError(f"invalid {name}: {path} is not writable ({exc.strerror or exc})") from None


# --- the checkpoint to resume ------------------------------------------------------------------------------------


def resolve_resume(args) -> str | None:
    """Check `args.resume_from_checkpoint` and return the checkpoint folder to resume from (None: none).

    ``last`` (or ``true``) means the newest complete checkpoint in `args.output_dir`: a newer one that a kill left
    half-written is skipped with a warning naming it. The checkpoint's optimizer state must fit `args.optimizer`.
    `args.resume_from_checkpoint` is set to the folder found, so results.json records it.

    Raises:
        CheckpointError: No complete checkpoint to resume; the named one is missing, half-written or damaged, or
            was saved by another optimizer.
    """
    value = args.resume_from_checkpoint
    if not value:
        return None
    if str(value).strip().lower() in RESUME_LAST:
        path = _newest_complete_checkpoint(Path(args.output_dir))
    else:
        path = Path(value)
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CheckpointError(f"cannot resume from {path}: {problem}")
    _check_optimizer_state(path, args)
    args.resume_from_checkpoint = str(path)
    return str(path)


def _newest_complete_checkpoint(folder: Path) -> Path:
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)] if folder.is_dir() else []
    skipped = []
    for path in sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            for bad, why in skipped:
                logger.warning(f"skipping {bad} ({why}); resuming from {path}")
            return path
        skipped.append((path, problem))
    why = f"; skipped: {'; '.join(f'{p.name} ({w})' for p, w in skipped)}" if skipped else ""
    raise CheckpointError(f"no complete checkpoint in {folder} to resume from (--resume_from_checkpoint last){why}")


def checkpoint_problem(path: Path) -> str | None:
    """What makes `path` unusable as a checkpoint to resume from, or None if it is complete.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without one was cut short during its save.
    Weights and torch archives are checked for truncation without loading them.
    """
    if not path.exists():
        return "not found"
    if not path.is_dir():
        return "it is a file, not a checkpoint folder"
    state = path / "trainer_state.json"
    if not state.is_file():
        return "it has no trainer_state.json: its save did not finish (a half-written checkpoint)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"trainer_state.json is not valid JSON ({first_line(exc)})"
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not (path / "pytorch_model.bin").is_file():
        return "it holds no model weights (*.safetensors)"
    for file in weights:
        problem = safetensors_problem(file)
        if problem:
            return f"{file.name} is damaged ({problem})"
    for name in ARCHIVES:
        if (path / name).is_file():
            try:
                zipfile.ZipFile(path / name).close()
            except (OSError, zipfile.BadZipFile) as exc:
                return f"{name} is damaged ({first_line(exc)}: cut short?)"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (its header must cover the file exactly), or None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt"):
            return None
    except (OSError, SafetensorError) as exc:
        return first_line(exc)


def _check_optimizer_state(path: Path, args) -> None:
    """The checkpoint's optimizer state was saved by the optimizer this run asks for (a state dict of another
    would load silently, or fail one step in): compared on a one-element stand-in, with the tensors memory-mapped."""
    file = path / "optimizer.pt"
    if not file.is_file() or not hasattr(args, "optimizer_hparams"):
        return
    from ..optim import create_optimizer
    from ..optim.validation import check_state_dict

    try:
        state_dict = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any unpickling failure means the same thing here: a damaged file
        raise CheckpointError(f"cannot resume from {path}: optimizer.pt cannot be read ({first_line(exc)})") from exc
    stand_in = create_optimizer(args.optimizer, [torch.nn.Parameter(torch.zeros(1))], **args.optimizer_hparams())
    try:
        check_state_dict(stand_in, state_dict, getattr(stand_in, "state_keys", ()))
    except ValueError as exc:
        raise CheckpointError(f"cannot resume from {path} with optimizer {args.optimizer!r}: {exc}") from None


def check_checkpoint_fits(model: torch.nn.Module, checkpoint: str | None, model_name: str) -> None:
    """Every weight in the checkpoint has the shape of the model's weight of that name (resuming another model's
    checkpoint would fail in the Trainer after tokenization, or load part of it). Adapter checkpoints are skipped."""
    if checkpoint is None or not (Path(checkpoint) / "model.safetensors").is_file():
        return
    from safetensors import safe_open

    here = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    with safe_open(str(Path(checkpoint) / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        common = [n for n in names if n in here]
        if not common:
            raise CheckpointError(f"cannot resume from {checkpoint}: it holds none of the weights of {model_name!r}")
        for name in common:
            shape = tuple(f.get_slice(name).get_shape())
            if shape != here[name]:
                raise CheckpointError(
                    f"cannot resume from {checkpoint}: it does not fit {model_name!r} ({name} has size "
                    f"{list(shape)} there, {list(here[name])} here): another model's checkpoint?"
                )


# --- the model ---------------------------------------------------------------------------------------------------


def check_model_path(name_or_path: str, shown: str | None = None) -> None:
    """A local model path must be a folder with a ``config.json`` (anything else is a Hub id, checked on load)."""
    path = Path(name_or_path).expanduser()
    shown = shown or name_or_path
    if path.is_file():
        raise ConfigError(f"cannot load model {shown!r}: it is a file, not a model folder")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"cannot load model {shown!r}: the folder holds no config.json (not a saved model)")
    for file in sorted(path.glob("*.safetensors")) if path.is_dir() else []:
        problem = safetensors_problem(file)
        if problem:
            raise ConfigError(f"cannot load model {shown!r}: {file.name} is damaged ({problem})")


def fit_max_seq_length(requested: int, config, tokenizer=None, minimum: int = 1, what: str = "") -> int:
    """`requested`, capped (with a warning) at what the model can embed: its position table
    (``max_position_embeddings``) and, with a `tokenizer`, its ``model_max_length``.

    Raises:
        ConfigError: `requested` is below `minimum` (the special tokens plus one token per text).
    """
    if requested < minimum:
        raise ConfigError(f"invalid max_seq_length: {requested} (too short{what}: use at least {minimum})")
    limits = [getattr(config, "max_position_embeddings", None)]
    if tokenizer is not None:
        limits.append(tokenizer.model_max_length)
    limit = min((n for n in limits if isinstance(n, int) and 0 < n < 10**9), default=math.inf)
    if requested > limit:
        logger.warning(f"max_seq_length {requested} is larger than the model's maximum length ({limit}); "
                       f"using max_seq_length {limit}")
        return int(limit)
    return requested

