"""The GLUE fine-tuning command: ``python scripts/finetune.py --task rte --optimizer adasam``.

- `parse_args` turns a command line into ``(ModelArguments, DataArguments, SAMTrainingArguments)``: every
  `TrainingArguments` flag works, over the YAML layers of `adasam_hf.glue.config` (command line > YAML > defaults).
- `finetune` runs one fine-tuning from those arguments and returns its results, also written to
  ``<output_dir>/results.json``. It never exits or reads ``sys.argv``, so other code (a sweep) can call it.
- `main` ties the two together for the script: bad input becomes one line on stderr and exit code 2.

It runs unchanged under ``torchrun`` and ``accelerate launch``.
"""

from __future__ import annotations

import csv
import sys
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
    set_seed,
)

from ..app.command import run_command, set_verbosity
from ..app.models import load_pretrained, resolve_model_path
from ..app.parsing import ArgumentParser, parse_command
from ..app.preflight import (
    check_checkpoint_fits,
    check_model_path,
    check_output_dir,
    fit_max_seq_length,
    resolve_resume,
)
from ..app.results import write_results
from ..trainer import SAMTrainer, SAMTrainingArguments, StopOnNonFiniteLoss
from .arguments import DataArguments, ModelArguments
from .config import resolve_config
from .data import find_glue_source, tokenize_glue
from .metrics import build_compute_metrics, predictions_from_logits
from .tasks import GlueDataError, GlueTask, get_task

__all__ = ["build_parser", "finetune", "main", "parse_args"]

PROG = "finetune.py"


def build_parser() -> ArgumentParser:
    return ArgumentParser(
        (ModelArguments, DataArguments, SAMTrainingArguments),
        prog=PROG,
        description="Fine-tune a model on a GLUE task with SAM / AdaSAM (adasam_hf). Settings: the command line "
        "over --config, over configs/tasks/<task>.yaml, over configs/defaults.yaml.",
    )


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, SAMTrainingArguments]:
    """Parse a command line (default ``sys.argv[1:]``) over the YAML layers.

    Raises:
        ConfigError: A bad argument or config file (argparse usage errors exit with code 2 instead).
        GlueDataError: An unknown task.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)

    def resolve(known):
        if known.task is None and known.config is None and any(a in ("-h", "--help") for a in argv):
            parser.parse_args(["--help"])  # exits; with a task, the help shows the task's defaults instead
        return resolve_config(parser, known.task, known.optimizer, known.config)

    return parse_command(parser, argv, ("--task", "--optimizer", "--config"), resolve,
                         lambda settings: f"{settings['task']}-{settings['optimizer']}", passthrough=(GlueDataError,))


def load_model(model_args: ModelArguments, config):
    """The sequence classifier of `config` (from `load_tokenizer_and_config`: the task's labels, one output for
    regression), with the model's pretrained weights."""
    return _load(model_args, AutoModelForSequenceClassification.from_pretrained,
                 resolve_model_path(model_args.model_name_or_path), config=config)


def load_tokenizer_and_config(model_args: ModelArguments, task: GlueTask):
    """The tokenizer and the model's config with the task's labels: what can be checked before the weights load
    (their loading warns of the new classifier head, which would bury a later one-line error)."""
    path = resolve_model_path(model_args.model_name_or_path)
    check_model_path(path, model_args.model_name_or_path)
    labels = {"id2label": task.id2label, "label2id": task.label2id} if not task.is_regression else {}
    config = _load(model_args, AutoConfig.from_pretrained, path, num_labels=task.num_labels,
                   finetuning_task=task.name, **labels)
    tokenizer = _load(model_args, AutoTokenizer.from_pretrained, resolve_model_path(model_args.tokenizer_name or path))
    if tokenizer.pad_token is None:  # decoder-only models (Llama, GPT-2) have none; batches need one
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, config


def _load(model_args: ModelArguments, load, *args, **kwargs):
    return load_pretrained("model", model_args.model_name_or_path, "minilm-l6", load, *args, **kwargs)


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
    return write_results(trainer, results, model_args, data_args, training_args)


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


def main(argv: list[str] | None = None) -> int:
    """Run `scripts/finetune.py`; returns the exit code: 0, or 2 for bad input or a diverged run."""
    return run_command(PROG, finetune, parse_args, argv, (GlueDataError,))


if __name__ == "__main__":
    sys.exit(main())
