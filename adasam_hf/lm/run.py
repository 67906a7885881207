"""The causal-LM fine-tuning command: ``python scripts/finetune_lm.py --train_file data.json --optimizer adasam``.

Instruction tuning (Alpaca / Open-Platypus records, `adasam_hf.lm.data`) of a causal LM with `SAMTrainer`, in full
or with LoRA adapters (`peft`), in float32 or bfloat16.

- `parse_args` turns a command line into ``(LMModelArguments, LMDataArguments, SAMTrainingArguments)``, over
  ``configs/lm/defaults.yaml`` and an optional ``--config`` file (command line > --config > defaults file).
- `finetune_lm` runs one fine-tuning and returns its results, also written to ``<output_dir>/results.json``.
- `main` is the script: bad input becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import math
import sys

import datasets
from transformers import DataCollatorForSeq2Seq, set_seed

from ..app.command import run_command, set_verbosity
from ..app.errors import ConfigError
from ..app.parsing import CONFIG_DIR, ArgumentParser, load_yaml, merge_settings, parse_command
from ..app.preflight import check_checkpoint_fits, check_output_dir, fit_max_seq_length, resolve_resume
from ..app.results import write_results
from ..trainer import SAMTrainer, SAMTrainingArguments, StopOnNonFiniteLoss
from .arguments import LMDataArguments, LMModelArguments
from .data import IGNORE_INDEX, InstructionDataError, load_instruction_data, tokenize_instructions
from .evaluation import evaluate_tasks
from .model import load_causal_lm

__all__ = ["LM_CONFIG_DIR", "build_parser", "finetune_lm", "main", "parse_args"]

PROG = "finetune_lm.py"
LM_CONFIG_DIR = CONFIG_DIR / "lm"


DESCRIPTION = ("Instruction-tune a causal LM with SAM / AdaSAM (adasam_hf), in full or with LoRA. Settings: the "
               "command line over --config, over configs/lm/defaults.yaml.")


def build_parser() -> ArgumentParser:
    return ArgumentParser((LMModelArguments, LMDataArguments, SAMTrainingArguments), prog=PROG, description=DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> tuple[LMModelArguments, LMDataArguments, SAMTrainingArguments]:
    """Parse a command line (default ``sys.argv[1:]``) over ``configs/lm/defaults.yaml`` and ``--config``.
    Raises ConfigError for a bad argument or config file (argparse usage errors exit with code 2 instead)."""
    parser = build_parser()

    def resolve(known):
        files = [LM_CONFIG_DIR / "defaults.yaml"] + ([known.config] if known.config else [])
        return merge_settings(parser, [load_yaml(f) for f in files], known.optimizer)

    return parse_command(parser, argv, ("--optimizer", "--config"), resolve, lambda s: f"lm-{s['optimizer']}")


# --- the model ----------------------------------------------------------------------------------------------


# --- the run ------------------------------------------------------------------------------------------------


def finetune_lm(
    model_args: LMModelArguments, data_args: LMDataArguments, training_args: SAMTrainingArguments
) -> dict:
    """Fine-tune on the instruction data, evaluate on the held-out split if there is one, return the results.

    Writes, in ``training_args.output_dir`` (main process only): the final model (LoRA: the adapters) and
    tokenizer, and ``results.json``: the returned dict, with ``train_loss``, ``eval_loss`` and ``perplexity``
    (exp of eval_loss) when evaluated, parameter counts and dtypes, peak memory, and the Trainer's
    ``log_history``.

    Raises:
        InstructionDataError: The data cannot be loaded or leaves nothing to train on.
        ConfigError: The model cannot be loaded; a LoRA target is unknown; evaluation is asked for without data.
        TrainingDivergedError: The loss became NaN or inf.
    """
    set_verbosity(training_args.get_process_log_level())

    check_output_dir(training_args)
    checkpoint = resolve_resume(training_args)
    raw = _splits(
        load_instruction_data(data_args.train_file, data_args.validation_file, data_args.dataset_name,
                              data_args.dataset_config_name, data_args.train_task_list),
        data_args, training_args.seed,
    )
    if "validation" not in raw and training_args.eval_strategy != "no":
        raise ConfigError(
            f"eval_strategy {training_args.eval_strategy.value!r} needs evaluation records: pass --validation_file, "
            "a --validation_split_percentage above 0, or --eval_strategy no"
        )
    set_seed(training_args.seed)  # the tiny model's weights and the LoRA adapters are random
    tokenizer, model = load_causal_lm(model_args, data_args.max_seq_length)
    data_args.max_seq_length = fit_max_seq_length(data_args.max_seq_length, model.config, minimum=2)
    check_checkpoint_fits(model, checkpoint, model_args.model_name_or_path)
    if training_args.gradient_checkpointing and model_args.lora_r > 0:
        model.enable_input_require_grads()  # else checkpointed blocks over a frozen embedding get no gradient
    with training_args.main_process_first(desc="tokenizing"):
        encoded = tokenize_instructions(raw, tokenizer, data_args.max_seq_length)
    benchmarks = {}
    if data_args.eval_task_list and data_args.eval_tasks_before:
        benchmarks["before"] = _benchmark(model, tokenizer, data_args, training_args)

    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)
    guard = StopOnNonFiniteLoss(probe=encoded.get("validation", encoded["train"]), collate=collator)
    trainer = SAMTrainer(
        model=model,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=encoded.get("validation"),
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[guard],
    )
    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    guard.check(trainer, checkpoint)
    trainer.save_model()
    trainer.save_state()
    if data_args.eval_task_list:
        benchmarks["after"] = _benchmark(trainer.model, tokenizer, data_args, training_args)

    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    results = {
        "model_name_or_path": model_args.model_name_or_path,
        "optimizer": training_args.optimizer,
        "lora_r": model_args.lora_r,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in trainable),
        "trainable_dtype": str(trainable[0].dtype).removeprefix("torch.") if trainable else None,
        "frozen_dtype": str(frozen[0].dtype).removeprefix("torch.") if frozen else None,
        "train_records": len(encoded["train"]),
        "eval_records": len(encoded["validation"]) if "validation" in encoded else 0,
    }
    results.update(train_output.metrics)
    if "validation" in encoded:
        metrics = trainer.evaluate()
        results.update(metrics)
        results["perplexity"] = _perplexity(metrics["eval_loss"])
    if benchmarks:
        results["benchmarks"] = {"tasks": data_args.eval_task_list, "limit": data_args.eval_tasks_limit,
                                 "subset_seed": data_args.eval_tasks_subset_seed, **benchmarks}
    return write_results(trainer, results, model_args, data_args, training_args)


def _benchmark(model, tokenizer, data_args: LMDataArguments, training_args: SAMTrainingArguments) -> dict | None:
    """lm-eval scores of `model` on --eval_tasks (with each document's), by the main process (the others wait; they
    get None)."""
    scores = None
    with training_args.main_process_first(desc="benchmarks"):
        if training_args.process_index == 0:
            scores = evaluate_tasks(model, tokenizer, data_args.eval_task_list, data_args.eval_tasks_limit,
                                    batch_size=training_args.per_device_eval_batch_size, per_document=True,
                                    subset_seed=data_args.eval_tasks_subset_seed)
    return scores


def _perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def _splits(raw: datasets.DatasetDict, data_args: LMDataArguments, seed: int) -> datasets.DatasetDict:
    """Hold out the evaluation records if none were given, then cut each split to its --max_*_samples."""
    if "validation" not in raw and data_args.validation_split_percentage > 0:
        train = raw["train"]
        n_eval = max(1, round(len(train) * data_args.validation_split_percentage / 100))
        if n_eval >= len(train):
            raise InstructionDataError(
                f"{len(train)} training record(s) are too few to hold out {data_args.validation_split_percentage:g}% "
                "for evaluation: pass --validation_split_percentage 0 --eval_strategy no, or more records"
            )
        parts = train.train_test_split(test_size=n_eval, shuffle=True, seed=seed)
        raw = datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]})
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    return datasets.DatasetDict({
        split: d if limits[split] is None else d.select(range(min(limits[split], len(d)))) for split, d in raw.items()
    })


def main(argv: list[str] | None = None) -> int:
    """Run `scripts/finetune_lm.py`; returns the exit code: 0, or 2 for bad input or a diverged run."""
    return run_command(PROG, finetune_lm, parse_args, argv, (InstructionDataError,))


if __name__ == "__main__":
    sys.exit(main())
