"""The GLUE command's own arguments, beside `SAMTrainingArguments`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..app.errors import ConfigError, check_positive_ints
from .data import GLUE_DIR_ENV
from .tasks import GLUE_TASKS, get_task

__all__ = ["DataArguments", "ModelArguments", "no_task_error"]


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="minilm-l6",
        metadata={
            "help": "A Hub model id (roberta-base), a local folder, or 'minilm-l6': the packaged all-MiniLM-L6-v2, "
            "which needs no network."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer id or folder, if not the model's own."}
    )


@dataclass
class DataArguments:
    task: str | None = field(
        default=None, metadata={"help": f"GLUE task: one of {', '.join(sorted(GLUE_TASKS))}."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": f"Folder with the original GLUE TSV layout (DIR/RTE/train.tsv, ...). Without it: ${GLUE_DIR_ENV}, "
            "then the embedded copy (rte, mrpc), then the Hub dataset nyu-mll/glue."
        },
    )
    from_hub: bool = field(
        default=False, metadata={"help": "Load the data from the Hub dataset nyu-mll/glue, whatever is on disk."}
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Tokens per example after truncation; batches are padded dynamically."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N examples of each dev split."}
    )
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N examples of each test split."}
    )
    config: str | None = field(
        default=None,
        metadata={"help": "A YAML file of settings over configs/defaults.yaml and configs/tasks/<task>.yaml."},
    )

    def __post_init__(self):
        if self.task is None:
            raise no_task_error()
        self.task = get_task(self.task).name
        samples = ("max_train_samples", "max_eval_samples", "max_predict_samples")
        check_positive_ints(self, ("max_seq_length", *samples), optional=samples)


def no_task_error() -> ConfigError:
    return ConfigError(f"no task given: pass --task (one of: {', '.join(sorted(GLUE_TASKS))})")
