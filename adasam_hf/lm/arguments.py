"""The LM command's own arguments, beside `SAMTrainingArguments`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..app.errors import ConfigError, check_positive_ints

__all__ = ["DTYPES", "TINY_LLAMA", "LMDataArguments", "LMModelArguments"]

TINY_LLAMA = "tiny-llama"
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
        samples = ("max_train_samples", "max_eval_samples")
        check_positive_ints(self, ("max_seq_length", *samples), optional=samples)
