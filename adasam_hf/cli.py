"""The fine-tuning command: ``python scripts/finetune.py --task rte --optimizer adasam``.

- `parse_args` turns a command line into ``(ModelArguments, DataArguments, SAMTrainingArguments)``: every
  `TrainingArguments` flag works, over the YAML layers of `adasam_hf.config` (command line > YAML > defaults).
- `finetune` runs one fine-tuning from those arguments and returns its results, also written to
  ``<output_dir>/results.json``. It never exits or reads ``sys.argv``, so other code (a sweep) can call it.
- `main` ties the two together for the script: bad input becomes one line on stderr and exit code 2.

It runs unchanged under ``torchrun`` and ``accelerate launch``: with no GPU, ``use_cpu`` defaults to True, without
which each torchrun process would silently train alone.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import platform
import re
import sys
from datetime import datetime
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    set_seed,
)

from . import __version__
from .callbacks import StopOnNonFiniteLoss, TrainingDivergedError
from .config import ConfigError, DataArguments, ModelArguments, resolve_config, resolve_model_path
from .data import GlueDataError, GlueTask, find_glue_source, get_task, quiet_hub_retries, tokenize_glue
from .metrics import build_compute_metrics, predictions_from_logits
from .preflight import (
    check_checkpoint_fits,
    check_model_path,
    check_output_dir,
    fit_max_seq_length,
    resolve_resume,
)
from .trainer import SAMTrainer
from .training_args import SAMTrainingArguments

__all__ = ["build_parser", "finetune", "main", "parse_args"]

PROG = "finetune.py"
RESULTS_FILE = "results.json"


class ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` whose usage errors are one line (argparse's own prints a usage block of every flag)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse takes "-1e-5" for a flag (it knows only -1 and -.5 as numbers): "--learning_rate -1e-5" would
        # fail as "expected one argument" instead of reaching the check that names the value.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> ArgumentParser:
    # allow_abbrev=False: `--task` etc. are read ahead of the full parse, which must not take `--ta` for `--task`.
    return ArgumentParser(
        (ModelArguments, DataArguments, SAMTrainingArguments),
        prog=PROG,
        allow_abbrev=False,
        description="Fine-tune a model on a GLUE task with SAM / AdaSAM (adasam_hf). Settings: the command line "
        "over --config, over configs/tasks/<task>.yaml, over configs/defaults.yaml.",
    )


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, SAMTrainingArguments]:
    """Parse a command line (default ``sys.argv[1:]``) over the YAML layers.

    Raises:
        ConfigError: A bad argument or config file (argparse usage errors exit with code 2 instead).
        GlueDataError: An unknown task.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # The task, optimizer and config file decide which YAML layers apply, so they are read first.
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--task", "--optimizer", "--config"):
        early.add_argument(flag)
    known, _ = early.parse_known_args(argv)
    if known.task is None and known.config is None and any(a in ("-h", "--help") for a in argv):
        parser.parse_args(["--help"])  # exits; with a task, the help shows the task's defaults instead
    try:
        settings = resolve_config(parser, known.task, known.optimizer, known.config)
        output_dir = default_output_dir(settings["task"], settings["optimizer"])
        parser.set_defaults(**{"use_cpu": not torch.cuda.is_available(), "output_dir": output_dir, **settings})
        *args, unknown = parser.parse_args_into_dataclasses(
            argv, return_remaining_strings=True, look_for_args_file=False  # no silent `finetune.args` file
        )
    except (ConfigError, GlueDataError):
        raise
    except ValueError as exc:  # the dataclasses' own checks: an unknown optimizer, rho <= 0, ...
        raise ConfigError(str(exc)) from exc
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    model_args, data_args, training_args = args
    if training_args.output_dir == output_dir and training_args.world_size > 1:
        # Each process made its own timestamp; all must write to rank 0's folder.
        from accelerate.utils import broadcast_object_list

        training_args.output_dir = broadcast_object_list([output_dir], from_process=0)[0]
    return model_args, data_args, training_args


def default_output_dir(task: str, optimizer: str) -> str:
    """``runs/<task>-<optimizer>-<time>``; a suffix if a run started in the same second already has it."""
    base = path = os.path.join("runs", f"{task}-{optimizer}-{datetime.now():%Y%m%d-%H%M%S}")
    n = 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def load_model(model_args: ModelArguments, config):
    """The sequence classifier of `config` (from `load_tokenizer_and_config`: the task's labels, one output for
    regression), with the model's pretrained weights."""
    return _loading(model_args, AutoModelForSequenceClassification.from_pretrained,
                    resolve_model_path(model_args.model_name_or_path), config=config)


def load_tokenizer_and_config(model_args: ModelArguments, task: GlueTask):
    """The tokenizer and the model's config with the task's labels: what can be checked before the weights load
    (their loading warns of the new classifier head, which would bury a later one-line error)."""
    path = resolve_model_path(model_args.model_name_or_path)
    check_model_path(path, model_args.model_name_or_path)
    labels = {"id2label": task.id2label, "label2id": task.label2id} if not task.is_regression else {}
    config = _loading(model_args, AutoConfig.from_pretrained, path, num_labels=task.num_labels,
                      finetuning_task=task.name, **labels)
    tokenizer = _loading(model_args, AutoTokenizer.from_pretrained,
                         resolve_model_path(model_args.tokenizer_name or path))
    if tokenizer.pad_token is None:  # decoder-only models (Llama, GPT-2) have none; batches need one
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, config


def _loading(model_args: ModelArguments, load, *args, **kwargs):
    """`load(*args, **kwargs)`, its failures on missing or damaged files as one ConfigError."""
    from safetensors import SafetensorError

    try:
        with quiet_hub_retries():
            return load(*args, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:  # missing or damaged files; a config it cannot read
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load model {model_args.model_name_or_path!r}: {first} (offline, pass a local folder or the "
            "packaged default, --model_name_or_path minilm-l6)"
        ) from exc


def finetune(model_args: ModelArguments, data_args: DataArguments, training_args: SAMTrainingArguments) -> dict:
    """Fine-tune on ``data_args.task``, evaluate on every dev split, and return the results.

    Always trains on the train split (``--do_train`` and ``--do_eval`` are not consulted), then evaluates each
    dev split with the best checkpoint (MNLI: matched as ``eval_*``, mismatched as ``eval_mismatched_*``). Writes,
    in ``training_args.output_dir`` (the main process only): the best model and tokenizer; ``results.json`` (the
    returned dict); ``<prefix>_predictions.tsv`` per dev split (idx, prediction, label); with ``--do_predict``,
    GLUE-submission TSVs of each test split present, under ``glue_submission/``; and, as the Trainer does,
    checkpoints and TensorBoard logs.

    Raises:
        GlueDataError: The data cannot be loaded.
        ConfigError: The model cannot be loaded.
        TrainingDivergedError: The loss became NaN or inf; training stopped before saving such weights.
    """
    task = get_task(data_args.task)
    set_verbosity(training_args.get_process_log_level())

    # Everything that can be checked is checked before the data is tokenized and long before the first step.
    check_output_dir(training_args)
    checkpoint = resolve_resume(training_args)
    source = find_glue_source(task, data_args.data_dir, data_args.from_hub)
    loaded = source.load(task)
    raw = _select_splits(loaded, task, data_args, training_args.do_predict)
    tokenizer, config = load_tokenizer_and_config(model_args, task)
    pair = len(task.text_columns) == 2
    special = tokenizer.num_special_tokens_to_add(pair=pair)
    data_args.max_seq_length = fit_max_seq_length(
        data_args.max_seq_length, config, tokenizer, minimum=special + len(task.text_columns),
        what=f" for {task.name}: the tokenizer adds {special} special tokens to a {'pair' if pair else 'sentence'}",
    )
    with torch.device("meta"):  # the shapes, without weights
        check_checkpoint_fits(AutoModelForSequenceClassification.from_config(config), checkpoint,
                              model_args.model_name_or_path)
    set_seed(training_args.seed)  # before the new classifier head is initialised
    model = load_model(model_args, config)
    with training_args.main_process_first(desc="tokenizing"):
        encoded = tokenize_glue(raw, tokenizer, task, data_args.max_seq_length)

    collator = DataCollatorWithPadding(tokenizer)
    guard = StopOnNonFiniteLoss(probe=encoded[task.eval_split], collate=collator)
    trainer = SAMTrainer(
        model=model,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=encoded[task.eval_split],
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=build_compute_metrics(task),
        callbacks=[guard],
    )
    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    guard.check(trainer, checkpoint)
    trainer.save_model()  # the best checkpoint's weights, with load_best_model_at_end
    trainer.save_state()

    output_dir = Path(training_args.output_dir)
    write = trainer.is_world_process_zero()
    results = {
        "task": task.name,
        "optimizer": training_args.optimizer,
        "model_name_or_path": model_args.model_name_or_path,
        **source.provenance(task, loaded),
    }
    for split in task.validation_splits:
        prefix = "eval" if split == task.eval_split else f"eval_{split.removeprefix('validation_')}"
        out = trainer.predict(encoded[split], metric_key_prefix=prefix)
        trainer.log(out.metrics)  # to TensorBoard too
        results.update(out.metrics)
        if write:
            predictions = predictions_from_logits(task, out.predictions)
            _write_tsv(output_dir / f"{prefix}_predictions.tsv", ("idx", "prediction", "label"),
                       zip(raw[split]["idx"], _plain(predictions), _plain(out.label_ids)))
    if training_args.do_predict:
        results["submission_files"] = _predict_test(trainer, task, raw, encoded, output_dir, write)

    results.update(train_output.metrics)
    results.update(_resources(trainer))
    results["log_history"] = trainer.state.log_history  # the training and evaluation curves
    results["hyperparameters"] = {
        **dataclasses.asdict(model_args),
        **dataclasses.asdict(data_args),
        **training_args.to_dict(),
    }
    results = json.loads(json.dumps(results, default=str))  # JSON-safe: enums, paths, numpy scalars
    if write:
        (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


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


def _select_splits(raw: datasets.DatasetDict, task: GlueTask, data_args: DataArguments, predict: bool):
    """The splits a run uses (test ones only to predict), each cut to its --max_*_samples."""
    limits = {"train": data_args.max_train_samples}
    limits.update({split: data_args.max_eval_samples for split in task.validation_splits})
    if predict:
        limits.update({split: data_args.max_predict_samples for split in task.test_splits if split in raw})
    return datasets.DatasetDict({
        split: raw[split] if n is None else raw[split].select(range(min(n, len(raw[split]))))
        for split, n in limits.items()
    })


def _predict_test(trainer, task: GlueTask, raw, encoded, output_dir: Path, write: bool) -> list[str]:
    """GLUE-submission TSVs (``index<TAB>prediction``) for each test split present, labels spelled as the
    original GLUE files spell them (class ids for CoLA, SST-2, MRPC, QQP and WNLI, names otherwise)."""
    files = []
    for split, name in zip(task.test_splits, task.submission_files, strict=True):
        if split not in encoded:
            continue
        # Test labels are -1 placeholders: predict without them, so no metric is computed on them.
        out = trainer.predict(encoded[split].remove_columns("labels"), metric_key_prefix="test")
        predictions = predictions_from_logits(task, out.predictions)
        if task.is_regression:
            column = [f"{p:.3f}" for p in predictions.tolist()]
        elif task.tsv.numeric_labels:
            column = predictions.tolist()
        else:
            column = [task.label_names[p] for p in predictions.tolist()]
        path = output_dir / "glue_submission" / name
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_tsv(path, ("index", "prediction"), zip(raw[split]["idx"], column))
        files.append(str(path))
    if not files and write:
        transformers.logging.get_logger(__name__).warning(f"--do_predict: no test split for {task.name}; none written")
    return files


def _write_tsv(path: Path, header, rows) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _plain(values) -> list:
    """Python numbers (repr of a float round-trips exactly, so metrics can be recomputed from the file)."""
    return np.asarray(values).tolist()


def _resources(trainer) -> dict:
    """Peak memory (the largest over processes), device and versions."""
    args = trainer.args
    peak_rss = torch.tensor([_peak_rss_mb()], dtype=torch.float64, device=args.device)
    peak_rss = trainer.accelerator.gather(peak_rss).max().item()
    cuda = args.device.type == "cuda"
    return {
        "peak_rss_mb": round(peak_rss, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated(args.device) / 2**20, 1) if cuda else None,
        "device": str(args.device),
        "device_name": torch.cuda.get_device_name(args.device) if cuda else platform.processor() or platform.machine(),
        "world_size": args.world_size,
        "versions": {
            "python": platform.python_version(),
            "adasam_hf": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "accelerate": _version("accelerate"),
        },
    }


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # Windows: current, not peak
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def run_command(prog: str, run, parse, argv, input_errors: tuple) -> int:
    """A script's exit code: 0, or 2 with one line on stderr for bad input or a diverged run."""
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


def main(argv: list[str] | None = None) -> int:
    """Run `scripts/finetune.py`; returns the exit code: 0, or 2 for bad input or a diverged run."""
    return run_command(PROG, finetune, parse_args, argv, (GlueDataError,))


if __name__ == "__main__":
    sys.exit(main())
