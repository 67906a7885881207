"""The error every bad setting raises, and how a command turns it into one line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad setting: a YAML file that does not parse or holds an unknown key or value, a bad argument, a model,
    output folder or checkpoint that cannot serve the run. The commands print it as one line, with exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors often append a stack of advice), else its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_positive_ints(obj, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Each of ``obj``'s attributes `names` is a positive int; those in `optional` may also be None.

    Raises:
        ConfigError: naming the first bad attribute and its value.
    """
    for name in names:
        value = getattr(obj, name)
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"invalid {name}: {value!r} (must be a positive integer)")
