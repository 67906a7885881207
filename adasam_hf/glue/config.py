"""The GLUE command's settings files: ``configs/defaults.yaml``, then ``configs/tasks/<task>.yaml``, then the
user's ``--config`` (see `adasam_hf.app.parsing` for how layers merge and are checked).

A task's facts (text columns, labels, metrics, the metric that picks the best checkpoint) live in one place, the
table `adasam_hf.glue.tasks.GLUE_TASKS`; the files hold training settings only. The task's
``metric_for_best_model`` comes from the table, under the files, so a file may still choose another of its metrics.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..app.errors import ConfigError
from ..app.parsing import CONFIG_DIR, YamlFile, load_yaml, merge_settings
from .arguments import no_task_error
from .tasks import GLUE_TASKS, GlueTask, get_task

__all__ = ["TASK_FACTS", "resolve_config"]

# Facts of `GlueTask` a settings file might be tempted to state: refused, naming where they live.
TASK_FACTS = ("text_columns", "label_names", "metrics")


def resolve_config(
    parser: argparse.ArgumentParser,
    task: str | None = None,
    optimizer: str | None = None,
    config: str | os.PathLike | None = None,
    config_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Merge the YAML layers for a run into one mapping of settings, checked against `parser`'s flags.

    `task` and `optimizer` are the command line's (None when not given there); the files may choose them
    otherwise. The result holds the resolved ``task`` and ``optimizer`` and is meant for
    ``parser.set_defaults(**result)``, so the command line still wins over it.

    Raises:
        ConfigError: A file is missing or malformed; a key is unknown or a task fact; a value has the wrong type
            or is not among its choices; ``metric_for_best_model`` is not a metric of the task; no task is given.
        UnknownGlueTaskError: The task is not a GLUE task.
    """
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    user = load_yaml(config) if config else None
    if task is None and user is not None and "task" in user.data:
        task = _check_task(user, user.data["task"]).name
    if task is None:
        raise no_task_error()
    task = get_task(task)

    task_file = config_dir / "tasks" / f"{task.name}.yaml"
    if not task_file.is_file():
        raise ConfigError(f"task config not found: {task_file}")
    layers = [load_yaml(config_dir / "defaults.yaml"), load_yaml(task_file)] + ([user] if user is not None else [])
    if layers[1].data.get("task", task.name) != task.name:
        raise ConfigError(f"{layers[1].where('task')}: task {layers[1].data['task']!r} in the file of {task.name!r}")

    def check_key(layer: YamlFile, key: str, value) -> bool:
        if key == "task":
            _check_task(layer, value)
            return True
        if key in TASK_FACTS:
            raise ConfigError(
                f"{layer.where(key)}: {key} is a fact of the task, not a setting (it lives in "
                f"adasam_hf.glue.tasks.GLUE_TASKS: {task.name} has {key} {_fact(task, key)!r})"
            )
        return False

    merged = {"metric_for_best_model": task.metric_for_best_model,
              **merge_settings(parser, layers, optimizer, check_key)}
    best = merged["metric_for_best_model"]
    if best not in (*task.metric_names, "loss"):
        where = next((lay.where("metric_for_best_model") for lay in reversed(layers)
                      if "metric_for_best_model" in lay.data), "metric_for_best_model")
        raise ConfigError(
            f"{where}: metric_for_best_model {best!r} is not a metric of {task.name!r} "
            f"(choose from: {', '.join([*task.metric_names, 'loss'])})"
        )
    merged["task"] = task.name
    return merged


def _fact(task: GlueTask, key: str) -> list[str]:
    return list({"text_columns": task.text_columns, "label_names": task.label_names,
                 "metrics": task.metric_names}[key])


def _check_task(layer: YamlFile, value) -> GlueTask:
    if not isinstance(value, str) or value.strip().lower().replace("-", "") not in GLUE_TASKS:
        raise ConfigError(
            f"{layer.where('task')}: unknown task {value!r} (valid tasks: {', '.join(sorted(GLUE_TASKS))})"
        )
    return get_task(value)
