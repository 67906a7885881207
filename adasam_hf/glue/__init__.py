"""The GLUE application: fine-tune a sequence classifier on a GLUE task (``scripts/finetune.py``).

- `tasks`: every per-task fact, in one table; `data`: the TSV files, the embedded RTE / MRPC and the Hub;
- `metrics`: the GLUE metrics (scikit-learn, SciPy) and the offline `evaluate` module;
- `arguments`, `config`: the command's arguments and its YAML layers; `run`: `parse_args`, `finetune`, `main`.
"""

from .metrics import build_compute_metrics, compute_glue_metrics, load_glue_metric
from .run import build_parser, finetune, main, parse_args
from .tasks import GLUE_TASKS, GlueTask, get_task

__all__ = [
    "GLUE_TASKS",
    "GlueTask",
    "build_compute_metrics",
    "build_parser",
    "compute_glue_metrics",
    "finetune",
    "get_task",
    "load_glue_metric",
    "main",
    "parse_args",
]
