"""Command lines over YAML settings files, shared by `scripts/finetune.py` and `scripts/finetune_lm.py`.

A run's settings come in layers, lowest precedence first: the dataclass defaults, the application's YAML files
(its defaults, then, for GLUE, the task's), the user's ``--config`` file, then the command line. In each file, the
entry of the chosen optimizer in its ``optimizers:`` table overrides that file's top level, so a learning rate can
depend on the optimizer. Keys are the command-line flags without the dashes; every key and value is checked when
the file loads (type, choices), so a typo fails at once, naming the file, the line and the closest valid key,
instead of being silently ignored. The merged settings become the parser's defaults, so the command line wins.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser

from ..optim import get_optimizer_spec, list_optimizers
from .errors import ConfigError

__all__ = [
    "CONFIG_DIR",
    "ArgumentParser",
    "YamlFile",
    "default_output_dir",
    "load_yaml",
    "merge_settings",
    "parse_command",
]

# The configs/ folder of the source tree; the package is meant to be installed editable (`pip install -e .`).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
OPTIMIZERS_KEY = "optimizers"
_NOT_IN_YAML = {"config", OPTIMIZERS_KEY}  # a file names no other file; `optimizers` is the table itself


class ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` whose usage errors are one line (argparse's own prints a usage block of every flag)."""

    def __init__(self, *args, **kwargs):
        # allow_abbrev=False: the early flags are read ahead of the full parse, which must not take `--ta` for one.
        super().__init__(*args, allow_abbrev=False, **kwargs)
        # argparse takes "-1e-5" for a flag (it knows only -1 and -.5 as numbers): "--learning_rate -1e-5" would
        # fail as "expected one argument" instead of reaching the check that names the value.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_command(
    parser: ArgumentParser,
    argv: list[str] | None,
    early_flags: tuple[str, ...],
    resolve: Callable[[argparse.Namespace], dict[str, Any]],
    run_name: Callable[[dict[str, Any]], str],
    passthrough: tuple[type[Exception], ...] = (),
) -> tuple:
    """Parse a command line (default ``sys.argv[1:]``) over YAML layers into the parser's dataclasses.

    `early_flags` (e.g. ``--optimizer``, ``--config``) are read first, because they decide which layers apply;
    `resolve` turns them into the merged settings (holding the resolved ``optimizer``), which become the parser's
    defaults, and `run_name` names the default output folder, ``runs/<name>-<time>``. Without a GPU, ``use_cpu``
    defaults to True: without it, each torchrun process would silently train alone.

    Raises:
        ConfigError: A bad argument or settings file, including the dataclasses' own ValueErrors; errors of the
            types in `passthrough` propagate unchanged. argparse usage errors exit with code 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in early_flags:
        early.add_argument(flag)
    known, _ = early.parse_known_args(argv)
    try:
        settings = resolve(known)
        output_dir = default_output_dir(run_name(settings))
        parser.set_defaults(**{"use_cpu": not torch.cuda.is_available(), "output_dir": output_dir, **settings})
        *args, unknown = parser.parse_args_into_dataclasses(
            argv, return_remaining_strings=True, look_for_args_file=False  # no silent `<script>.args` file
        )
    except (ConfigError, *passthrough):
        raise
    except ValueError as exc:  # the dataclasses' own checks: an unknown optimizer, rho <= 0, ...
        raise ConfigError(str(exc)) from exc
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    training_args = args[-1]
    if training_args.output_dir == output_dir and training_args.world_size > 1:
        # Each process made its own timestamp; all must write to rank 0's folder.
        from accelerate.utils import broadcast_object_list

        training_args.output_dir = broadcast_object_list([output_dir], from_process=0)[0]
    return tuple(args)


def default_output_dir(name: str) -> str:
    """``runs/<name>-<time>``; a suffix if a run started in the same second already has it."""
    base = path = os.path.join("runs", f"{name}-{datetime.now():%Y%m%d-%H%M%S}")
    n = 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


# --- YAML files ---------------------------------------------------------------------------------------------


def merge_settings(
    parser: argparse.ArgumentParser,
    layers: list[YamlFile],
    optimizer: str | None = None,
    check_key: Callable[[YamlFile, str, Any], bool] | None = None,
) -> dict[str, Any]:
    """Check every layer against `parser`'s flags, then merge them in order (lowest precedence first), each
    file's entry for the chosen optimizer over its top level. The result holds the resolved ``optimizer``: the
    command line's (`optimizer`), else the last file's, else the flag's default.

    `check_key(layer, key, value)` lets an application take keys of its own (GLUE's ``task``): it returns True
    for a key it has checked and that is not a flag to set.

    Raises:
        ConfigError: A key is unknown; a value has the wrong type or is not among its choices.
    """
    actions = _flag_actions(parser)
    own = set()
    for layer in layers:
        own |= _check_layer(layer, actions, check_key)
    if optimizer is None:
        optimizer = next((lay.data["optimizer"] for lay in reversed(layers) if "optimizer" in lay.data), None)
    optimizer = get_optimizer_spec(optimizer or actions["optimizer"].default).name
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.data.items() if k not in own and k != OPTIMIZERS_KEY})
        merged.update(layer.data.get(OPTIMIZERS_KEY, {}).get(optimizer) or {})
    merged["optimizer"] = optimizer
    return merged


def _check_layer(layer: YamlFile, actions, check_key) -> set[str]:
    """Check every key and value of one file in place (string values are converted to the flag's type); return
    the keys `check_key` took."""
    settable = sorted(set(actions) - _NOT_IN_YAML)
    own = set()
    for key, value in layer.data.items():
        if check_key is not None and check_key(layer, key, value):
            own.add(key)
        elif key == OPTIMIZERS_KEY:
            _check_optimizers(layer, value, settable, actions)
        elif key in settable:
            layer.data[key] = _coerce(layer.where(key), key, value, actions[key])
        else:
            valid = settable + [OPTIMIZERS_KEY]
            raise ConfigError(f"{layer.where(key)}: unknown key {key!r}{_suggest(key, valid)}")
    return own


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


def _flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def _check_optimizers(layer: YamlFile, table, settable: list[str], actions) -> None:
    names = list_optimizers()
    if not isinstance(table, dict):
        raise ConfigError(f"{layer.where(OPTIMIZERS_KEY)}: optimizers must map optimizer names to settings")
    for name, settings in table.items():
        where = layer.where(OPTIMIZERS_KEY, name)
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
                    f"{layer.where(OPTIMIZERS_KEY, name, key)}: unknown key {key!r} for optimizer {name!r}"
                    f"{_suggest(key, keys)}"
                )
            settings[key] = _coerce(layer.where(OPTIMIZERS_KEY, name, key), key, value, actions[key])


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
