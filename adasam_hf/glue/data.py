"""GLUE data: the original TSV files (a folder, or the copy of RTE and MRPC embedded in the package) or the Hub.

Data comes from the original GLUE distribution (``glue_data/<Task>/*.tsv`` as written by ``download_glue_data.py``):
a folder given by the user, or the copy of RTE and MRPC embedded in the package (``adasam_hf/glue/glue_data/``); else
from the HuggingFace Hub (``nyu-mll/glue``). Every source yields the same ``DatasetDict`` schema, so a run does not
depend on where its data came from, and `GlueSource` records which one it was. Task facts: `adasam_hf.glue.tasks`.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..app.models import HUB_UNREACHABLE, quiet_hub_retries
from .tasks import GLUE_TASKS, GlueDataError, GlueTask, TsvLayout, get_task

__all__ = [
    "EMBEDDED_GLUE_DIR",
    "GLUE_DIR_ENV",
    "GlueFileNotFoundError",
    "GlueFormatError",
    "GlueSource",
    "find_glue_source",
    "load_glue",
    "read_glue_tsv",
    "tokenize_glue",
]

HUB_DATASET = "nyu-mll/glue"
GLUE_DIR_ENV = "GLUE_DIR"
# RTE and MRPC, byte for byte from the original distribution (its README gives origin, counts and sha256).
EMBEDDED_GLUE_DIR = Path(__file__).resolve().parent / "glue_data"


class GlueFileNotFoundError(GlueDataError, FileNotFoundError):
    """A task folder or TSV file is missing from the local GLUE layout."""


class GlueFormatError(GlueDataError, ValueError):
    """A local TSV file does not have the layout or labels its task expects."""


def _layout_hint(task: GlueTask) -> str:
    files = ", ".join(f"DATA_DIR/{task.folder}/{f}" for f in task.split_files.values())
    return f"expected the original GLUE layout: {files}"


def _read_rows(path: Path):
    """Yield ``(line_number, fields)``; QUOTE_NONE because GLUE text contains unbalanced ``"``.

    The csv module refuses fields over 128 KiB by default; no field can be longer than its file, so the limit is
    raised to the file's size while it is read (tokenization truncates long texts anyway).
    """
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, path.stat().st_size + 1))
    try:
        # utf-8-sig drops the BOM that starts MRPC's header.
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            try:
                for row in reader:
                    yield reader.line_num, row
            except UnicodeDecodeError as exc:
                raise GlueFormatError(
                    f"{path}: not UTF-8 text near line {reader.line_num + 1} ({exc.reason})") from exc
            except csv.Error as exc:  # a NUL byte, ...
                raise GlueFormatError(f"{path}:{reader.line_num}: not a TSV row ({exc})") from exc
    finally:
        csv.field_size_limit(limit)


def _column_index(path: Path, header: list[str], source: str | int) -> int:
    if isinstance(source, int):
        return source
    try:
        return header.index(source)
    except ValueError:
        raise GlueFormatError(f"{path}: header has no column {source!r}; columns found: {header}") from None


def _parse_label(task: GlueTask, layout: TsvLayout, raw: str, path: Path, line: int) -> int | float:
    if task.is_regression:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise GlueFormatError(f"{path}:{line}: label {raw!r} is not a finite number (task {task.name})")
        return value
    valid = [str(i) for i in range(task.num_labels)] if layout.numeric_labels else list(task.label_names)
    if raw not in valid:
        meaning = f", the ids of {list(task.label_names)}" if layout.numeric_labels else ""
        raise GlueFormatError(f"{path}:{line}: label {raw!r} is not one of {valid}{meaning} (task {task.name})")
    return valid.index(raw)


def _read_split(task: GlueTask, path: Path, layout: TsvLayout) -> datasets.Dataset:
    rows = _read_rows(path)
    if layout.header:
        _, header = next(rows, (0, []))
        n_fields = len(header)
    else:
        header = []
        n_fields = max([*(s for s in layout.text if isinstance(s, int)), layout.label]) + 1
    text_idx = [_column_index(path, header, s) for s in layout.text]
    label_idx = None if layout.label is None else _column_index(path, header, layout.label)

    columns: dict[str, list] = {col: [] for col in task.features}
    missing_label = -1.0 if task.is_regression else -1  # what the Hub puts in unlabelled splits
    for line, row in rows:
        if len(row) != n_fields:
            raise GlueFormatError(f"{path}:{line}: expected {n_fields} tab-separated fields, found {len(row)}")
        for col, i in zip(task.text_columns, text_idx, strict=True):
            columns[col].append(row[i])
        label = missing_label if label_idx is None else _parse_label(task, layout, row[label_idx], path, line)
        columns["label"].append(label)
    if not columns["label"]:
        raise GlueFormatError(f"{path}: no rows{' after the header' if layout.header else ''} (task {task.name})")
    # The Hub's idx is the row number within the split.
    columns["idx"] = list(range(len(columns["label"])))
    return datasets.Dataset.from_dict(columns, features=task.features)


def read_glue_tsv(data_dir: str | os.PathLike, task: str | GlueTask) -> datasets.DatasetDict:
    """Read one task from the original GLUE TSV files into the Hub's splits and schema.

    Train and every dev file are required; a test file is read when present (its labels become -1, as on
    the Hub). Problems raise at once, naming file and line, rather than silently dropping rows: a dropped row
    would change the split and every metric computed on it.

    Raises:
        GlueFileNotFoundError: The data folder, the task folder, ``train.tsv`` or a dev file is missing.
        GlueFormatError: A needed header column is missing, a row has the wrong number of fields, or a label is
            outside the task's label set.
    """
    task = get_task(task)
    if not Path(data_dir).is_dir():
        raise GlueFileNotFoundError(f"GLUE data directory not found: {data_dir} ({_layout_hint(task)})")
    folder = Path(data_dir) / task.folder
    if not folder.is_dir():
        raise GlueFileNotFoundError(f"GLUE task folder not found: {folder} ({_layout_hint(task)})")
    for name in task.split_files.values():  # every file is there before any is read
        if not (folder / name).is_file():
            raise GlueFileNotFoundError(f"GLUE file not found: {folder / name} ({_layout_hint(task)})")
    splits = {split: _read_split(task, folder / name, task.tsv) for split, name in task.split_files.items()}
    for split, name in zip(task.test_splits, task.test_files, strict=True):
        if (folder / name).is_file():
            splits[split] = _read_split(task, folder / name, task.test_tsv)
    return datasets.DatasetDict(splits)


@dataclass(frozen=True)
class GlueSource:
    """Where a task's data comes from.

    Attributes:
        kind: ``data_dir`` (the argument), ``GLUE_DIR`` (the environment variable), ``embedded`` (the package's
            copy of RTE and MRPC) or ``hub`` (``nyu-mll/glue``).
        root: The folder in the GLUE layout, for every kind but ``hub``.
    """

    kind: str
    root: Path | None = None

    def load(self, task: str | GlueTask) -> datasets.DatasetDict:
        """The task's splits. Raises GlueDataError (see `read_glue_tsv`; for the Hub: unreachable)."""
        task = get_task(task)
        if self.root is not None:
            return read_glue_tsv(self.root, task)
        try:
            with quiet_hub_retries():
                return datasets.load_dataset(HUB_DATASET, task.name)
        except HUB_UNREACHABLE as exc:
            embedded = ", ".join(sorted(t for t in GLUE_TASKS if _embedded_has(GLUE_TASKS[t])))
            raise GlueDataError(
                f"cannot load {HUB_DATASET}/{task.name}: the HuggingFace Hub is unreachable ({type(exc).__name__}); "
                f"pass --data_dir DIR (or set {GLUE_DIR_ENV}) pointing at the GLUE TSV layout "
                f"DIR/{task.folder}/train.tsv (embedded, offline: {embedded})"
            ) from exc

    def provenance(self, task: str | GlueTask, loaded: datasets.DatasetDict) -> dict:
        """What results.json records: the source, its folder, and the sha256 of every file read (for the Hub, of
        the cached Arrow files the splits were loaded from)."""
        task = get_task(task)
        if self.root is not None:
            folder = Path(self.root) / task.folder
            names = [*task.split_files.values(), *(f for f in task.test_files if (folder / f).is_file())]
            files = [folder / name for name in names]
        else:
            files = [Path(c["filename"]) for split in loaded.values() for c in split.cache_files]
        return {
            "data_source": self.kind,
            "data_dir": str(self.root) if self.root is not None else HUB_DATASET,
            "data_files": {str(f): _sha256(f) for f in files},
        }


def _embedded_has(task: GlueTask) -> bool:
    return all((EMBEDDED_GLUE_DIR / task.folder / name).is_file() for name in task.split_files.values())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_glue_source(
    task: str | GlueTask, data_dir: str | os.PathLike | None = None, from_hub: bool = False
) -> GlueSource:
    """Where `task` is read from: `data_dir`, else ``$GLUE_DIR``, else the embedded copy (RTE, MRPC), else the
    Hub. Local files come first, so an offline machine never waits on the Hub's retries when data is in place;
    `from_hub` skips them all.

    Raises:
        GlueDataError: `from_hub` together with a `data_dir`.
    """
    task = get_task(task)
    if from_hub:
        if data_dir:
            raise GlueDataError(f"pass one of --data_dir ({data_dir}) and --from_hub, not both")
        return GlueSource("hub")
    if data_dir:
        return GlueSource("data_dir", Path(data_dir))
    if os.environ.get(GLUE_DIR_ENV):
        return GlueSource(GLUE_DIR_ENV, Path(os.environ[GLUE_DIR_ENV]))
    if _embedded_has(task):
        return GlueSource("embedded", EMBEDDED_GLUE_DIR)
    return GlueSource("hub")


def load_glue(
    task: str | GlueTask, data_dir: str | os.PathLike | None = None, from_hub: bool = False
) -> datasets.DatasetDict:
    """Load a GLUE task from the first source that has it (see `find_glue_source`).

    Raises:
        GlueDataError: The Hub is unreachable and no local copy has the task; or any local-file error of
            ``read_glue_tsv``.
    """
    return find_glue_source(task, data_dir, from_hub).load(task)


def tokenize_glue(
    dataset_dict: Mapping[str, datasets.Dataset] | datasets.DatasetDict,
    tokenizer,
    task: str | GlueTask,
    max_seq_length: int,
) -> datasets.DatasetDict:
    """Tokenize every split for sequence classification, leaving only model inputs and ``labels``.

    Sequences are truncated but not padded: ``DataCollatorWithPadding`` pads each batch to its own longest
    sequence, which is much cheaper than padding everything to ``max_seq_length``. ``label`` is renamed to
    ``labels``, the name HF models take; STS-B labels stay float so the model uses an MSE loss. Unlabelled test
    splits keep label -1, which is only fit for ``predict``, not for a loss.
    """
    task = get_task(task)
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length <= 0:
        raise ValueError(f"max_seq_length must be a positive int, got {max_seq_length!r}")

    def encode(batch):
        return tokenizer(*(batch[col] for col in task.text_columns), truncation=True, max_length=max_seq_length)

    out = {}
    for split, ds in dataset_dict.items():
        drop = [col for col in (*task.text_columns, "idx") if col in ds.column_names]
        ds = ds.map(encode, batched=True, remove_columns=drop, desc=f"Tokenizing {task.name}/{split}")
        out[split] = ds.rename_column("label", "labels")
    return datasets.DatasetDict(out)
