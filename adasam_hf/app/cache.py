"""Folders built once and kept: the converted SmolLM2, the offline lm-eval tasks.

A folder is built in a temporary sibling and renamed into place when complete, so a build killed half-way is
redone, never used; two processes building at once both finish, and the first rename wins.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["CACHE_ENV", "build_once", "cache_root"]

CACHE_ENV = "ADASAM_HF_CACHE"


def cache_root() -> Path:
    """``$ADASAM_HF_CACHE``, default ``~/.cache/adasam_hf``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "adasam_hf")


def build_once(name: str, build: Callable[[Path, Path], None], marker: str) -> Path:
    """``cache_root() / name``, made by ``build(work, final)`` if it does not hold `marker` yet (`build` writes into
    `work`; paths it records must point at `final`, where `work` is renamed to)."""
    folder = cache_root() / name
    if (folder / marker).is_file():
        return folder
    if folder.exists():  # not made by a build of ours (those appear complete, by a rename): start again
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        build(work, folder)
        try:
            os.replace(work, folder)
        except OSError:  # another process finished first: its folder is as good
            if not (folder / marker).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder
