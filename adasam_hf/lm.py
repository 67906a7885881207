"""The causal-LM fine-tuning command: ``python scripts/finetune_lm.py --train_file data.json --optimizer adasam``.

Instruction tuning (Alpaca / Open-Platypus records, `adasam_hf.instruction_data`) of a causal LM with `SAMTrainer`,
in full or with LoRA adapters (`peft`), in float32 or bfloat16.

- `parse_args` turns a command line into ``(LMModelArguments, LMDataArguments, SAMTrainingArguments)``, over
  ``configs/lm/defaults.yaml`` and an optional ``--config`` file (command line > --config > defaults file).
- `finetune_lm` runs one fine-tuning and returns its results, also written to ``<output_dir>/results.json``.
- `main` is the script: bad input becomes one line on stderr and exit code 2.

The default model, ``tiny-llama``, is a small Llama built from a config with seeded random weights and the packaged
MiniLM tokenizer: it needs no network, so the command and its tests run anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, LlamaConfig, set_seed

from .callbacks import StopOnNonFiniteLoss
from .cli import RESULTS_FILE, ArgumentParser, _resources, default_output_dir, run_command, set_verbosity
from .config import CONFIG_DIR, ConfigError, resolve_model_path, resolve_settings
from .data import quiet_hub_retries
from .instruction_data import (
    IGNORE_INDEX,
    InstructionDataError,
    load_instruction_data,
    special_token_ids,
    tokenize_instructions,
)
from .preflight import (
    check_checkpoint_fits,
    check_model_path,
    check_output_dir,
    fit_max_seq_length,
    resolve_resume,
)
from .trainer import SAMTrainer
from .training_args import SAMTrainingArguments

__all__ = [
    "LM_CONFIG_DIR",
    "TINY_LLAMA",
    "LMDataArguments",
    "LMModelArguments",
    "build_parser",
    "finetune_lm",
    "load_causal_lm",
    "main",
    "parse_args",
]

PROG = "finetune_lm.py"
LM_CONFIG_DIR = CONFIG_DIR / "lm"
TINY_LLAMA = "tiny-llama"
# Small enough to train in seconds on a CPU, shaped like Llama (grouped-query attention, SwiGLU, RMSNorm, RoPE).
TINY_LLAMA_CONFIG = dict(
    hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}


@dataclass
class LMModelArguments:
    model_name_or_path: str = field(
        default=TINY_LLAMA,
        metadata={
            "help": f"A causal LM: a Hub id, a local folder, or '{TINY_LLAMA}', a small random Llama "
            "(seeded by --seed) with the packaged MiniLM tokenizer, which needs no network."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer id or folder, if not the model's own ('minilm-l6' for tiny-llama)."}
    )
    model_dtype: str = field(
        default="float32",
        metadata={
            "help": "The dtype the weights are loaded in ('auto': the checkpoint's). With bfloat16, the optimizer "
            "state is bfloat16 too; LoRA adapters stay float32.",
            "choices": list(DTYPES),
        },
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 fine-tunes every weight."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (the scale is alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: str = field(
        default="q_proj,v_proj",
        metadata={"help": "Comma-separated names of the linear layers that get adapters, or 'all-linear'."},
    )

    def __post_init__(self):
        if self.model_dtype not in DTYPES:
            raise ConfigError(f"invalid model_dtype: {self.model_dtype!r} (choose from: {', '.join(DTYPES)})")
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 0:
            raise ConfigError(f"invalid lora_r: {self.lora_r!r} (must be an integer >= 0; 0 means no LoRA)")
        if not self.lora_alpha > 0:
            raise ConfigError(f"invalid lora_alpha: {self.lora_alpha!r} (must be > 0)")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"invalid lora_dropout: {self.lora_dropout!r} (must be in [0, 1))")
        if not self.target_modules:
            raise ConfigError(f"invalid lora_target_modules: {self.lora_target_modules!r} (name at least one layer)")

    @property
    def target_modules(self) -> list[str] | str:
        if self.lora_target_modules.strip() == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]


@dataclass
class LMDataArguments:
    train_file: str | None = field(
        default=None,
        metadata={"help": "Training records in the Alpaca layout (instruction, optional input, output): .json "
                  "(an array) or .jsonl."},
    )
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation records, same layout."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset in the same layout (garage-bAInd/Open-Platypus, tatsu-lab/alpaca), "
                  "instead of --train_file; needs the network."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    validation_split_percentage: float = field(
        default=5.0,
        metadata={"help": "Without a validation file or split, hold out this percentage of the training records "
                  "(at least one) for evaluation; 0 holds out none."},
    )
    max_seq_length: int = field(default=512, metadata={"help": "Tokens per record after truncation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training records."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation records."})
    config: str | None = field(
        default=None, metadata={"help": "A YAML file of settings over configs/lm/defaults.yaml."}
    )

    def __post_init__(self):
        if self.train_file is None and self.dataset_name is None:
            raise ConfigError("no data given: pass --train_file FILE.json (Alpaca layout) or --dataset_name NAME (Hub)")
        if self.train_file is not None and self.dataset_name is not None:
            raise ConfigError("pass one of --train_file and --dataset_name, not both")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError(
                f"invalid validation_split_percentage: {self.validation_split_percentage!r} (must be in [0, 100))"
            )
        for name in ("max_seq_length", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if (value is not None or name == "max_seq_length") and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ConfigError(f"invalid {name}: {value!r} (must be a positive integer)")


def build_parser() -> ArgumentParser:
    return ArgumentParser(
        (LMModelArguments, LMDataArguments, SAMTrainingArguments),
        prog=PROG,
        allow_abbrev=False,
        description="Instruction-tune a causal LM with SAM / AdaSAM (adasam_hf), in full or with LoRA. Settings: "
        "the command line over --config, over configs/lm/defaults.yaml.",
    )


def parse_args(argv: list[str] | None = None) -> tuple[LMModelArguments, LMDataArguments, SAMTrainingArguments]:
    """Parse a command line (default ``sys.argv[1:]``) over the YAML layers.

    Raises:
        ConfigError: A bad argument or config file (argparse usage errors exit with code 2 instead).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--optimizer", "--config"):
        early.add_argument(flag)
    known, _ = early.parse_known_args(argv)
    try:
        files = [LM_CONFIG_DIR / "defaults.yaml"] + ([known.config] if known.config else [])
        settings = resolve_settings(parser, files, known.optimizer)
        output_dir = default_output_dir("lm", settings["optimizer"])
        parser.set_defaults(**{"use_cpu": not torch.cuda.is_available(), "output_dir": output_dir, **settings})
        *args, unknown = parser.parse_args_into_dataclasses(
            argv, return_remaining_strings=True, look_for_args_file=False
        )
    except ConfigError:
        raise
    except ValueError as exc:  # the dataclasses' own checks: an unknown optimizer, rho <= 0, ...
        raise ConfigError(str(exc)) from exc
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    model_args, data_args, training_args = args
    if training_args.output_dir == output_dir and training_args.world_size > 1:
        from accelerate.utils import broadcast_object_list

        training_args.output_dir = broadcast_object_list([output_dir], from_process=0)[0]
    return model_args, data_args, training_args


# --- the model ----------------------------------------------------------------------------------------------


def load_causal_lm(model_args: LMModelArguments, max_seq_length: int = 512):
    """The tokenizer and the causal LM, with LoRA adapters when ``lora_r > 0`` (only they then train).

    Seed first (`set_seed`): the tiny Llama's weights and the adapters are random.

    Raises:
        ConfigError: The model cannot be loaded, or a LoRA target names no linear layer of it.
    """
    from safetensors import SafetensorError

    dtype = DTYPES[model_args.model_dtype]
    try:
        with quiet_hub_retries():
            if model_args.model_name_or_path == TINY_LLAMA:
                tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_args.tokenizer_name or "minilm-l6"))
                bos, eos = special_token_ids(tokenizer)
                config = LlamaConfig(
                    vocab_size=len(tokenizer), max_position_embeddings=max_seq_length, bos_token_id=bos,
                    eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, **TINY_LLAMA_CONFIG,
                )
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if dtype == "auto" else dtype)
            else:
                path = resolve_model_path(model_args.model_name_or_path)
                if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
                    raise ConfigError(f"model folder not found: {path} (or pass a Hub id, or {TINY_LLAMA})")
                check_model_path(path, model_args.model_name_or_path)
                tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_args.tokenizer_name or path))
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except ConfigError:
        raise
    except (OSError, ValueError, SafetensorError) as exc:  # missing or damaged files; a config it cannot read
        text = str(exc).strip()
        raise ConfigError(
            f"cannot load causal LM {model_args.model_name_or_path!r}: {text.splitlines()[0] if text else exc!r} "
            f"(offline, pass a local folder or the default, --model_name_or_path {TINY_LLAMA})"
        ) from exc
    if tokenizer.pad_token is None:  # Llama's tokenizers have none; padded labels are -100 whatever the id
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model_args.lora_r > 0:
        model = _add_lora(model, model_args)
    return tokenizer, model


def _add_lora(model, model_args: LMModelArguments):
    from peft import LoraConfig, get_peft_model

    targets = model_args.target_modules
    if targets != "all-linear":
        linear = _linear_layer_names(model)
        unknown = [t for t in targets if t not in linear]
        if unknown:
            raise ConfigError(
                f"invalid lora_target_modules: {', '.join(map(repr, unknown))} is not a linear layer of "
                f"{model_args.model_name_or_path!r} (choose from: all-linear, {', '.join(sorted(linear))})"
            )
    config = LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )
    # peft keeps the adapters in float32 over a bfloat16 base (autocast_adapter_dtype), so their updates are exact.
    return get_peft_model(model, config)


def _linear_layer_names(model) -> set[str]:
    from transformers.pytorch_utils import Conv1D

    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}


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
                              data_args.dataset_config_name),
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
    results.update(_resources(trainer))
    results["log_history"] = trainer.state.log_history
    results["hyperparameters"] = {
        **dataclasses.asdict(model_args),
        **dataclasses.asdict(data_args),
        **training_args.to_dict(),
    }
    results = json.loads(json.dumps(results, default=str))
    if trainer.is_world_process_zero():
        (Path(training_args.output_dir) / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


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
