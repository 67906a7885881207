"""GLUE task facts, loading and tokenization.

Every per-task fact (text columns, labels, splits, metrics, the layout of the original TSV files) lives in one
table, ``GLUE_TASKS``, so the rest of the package never branches on task names. Data comes from the original GLUE
distribution (``glue_data/<Task>/*.tsv`` as written by ``download_glue_data.py``): a folder given by the user, or
the copy of RTE and MRPC embedded in the package (``adasam_hf/glue_data/``); else from the HuggingFace Hub
(``nyu-mll/glue``). Every source yields the same ``DatasetDict`` schema, so a run does not depend on where its data
came from, and `GlueSource` records which one it was.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets
from huggingface_hub.errors import LocalEntryNotFoundError

__all__ = [
    "EMBEDDED_GLUE_DIR",
    "GLUE_TASKS",
    "GlueDataError",
    "GlueFileNotFoundError",
    "GlueFormatError",
    "GlueSource",
    "GlueTask",
    "TsvLayout",
    "UnknownGlueTaskError",
    "find_glue_source",
    "get_task",
    "load_glue",
    "quiet_hub_retries",
    "read_glue_tsv",
    "tokenize_glue",
]

HUB_DATASET = "nyu-mll/glue"
GLUE_DIR_ENV = "GLUE_DIR"
# RTE and MRPC, byte for byte from the original distribution (its README gives origin, counts and sha256).
EMBEDDED_GLUE_DIR = Path(__file__).resolve().parent / "glue_data"


class GlueDataError(RuntimeError):
    """Base of every data error here, so a CLI can catch them all with one clause."""


class GlueFileNotFoundError(GlueDataError, FileNotFoundError):
    """A task folder or TSV file is missing from the local GLUE layout."""


class GlueFormatError(GlueDataError, ValueError):
    """A local TSV file does not have the layout or labels its task expects."""


class UnknownGlueTaskError(GlueDataError, ValueError):
    """The task name is not one of the GLUE tasks."""


@dataclass(frozen=True)
class TsvLayout:
    """Where one kind of original GLUE file keeps its text and label.

    Attributes:
        header: Whether the first line names the columns.
        text: One source per Hub text column: a header name, or a 0-based position for headerless files.
        label: Header name or position of the label; ``None`` for unlabelled (test) files.
        numeric_labels: The label is written as the Hub class id (``0``/``1``) rather than as a class name.
    """

    header: bool
    text: tuple[str | int, ...]
    label: str | int | None = None
    numeric_labels: bool = False


@dataclass(frozen=True)
class GlueTask:
    """Facts about one GLUE task, spelled as on the Hub so local and Hub data are interchangeable.

    Attributes:
        name: Hub config name (``nyu-mll/glue``), lowercase.
        folder: Folder name in the original GLUE distribution.
        text_columns: Hub text columns, in the order they are fed to the tokenizer.
        label_names: Class names in Hub id order; empty for the regression task (stsb).
        validation_splits: Hub validation split names; the first is the one evaluated during training.
        dev_files: Local files of ``validation_splits``, in the same order.
        test_splits: Hub test split names (labels are -1 there).
        test_files: Local files of ``test_splits``; optional on disk because they carry no labels.
        submission_files: File names the GLUE server expects for predictions on ``test_splits``, in the same
            order; ``<folder>.tsv`` unless given (MNLI has two).
        metric_names: Keys returned by ``evaluate``'s GLUE metric for this task.
        metric_for_best_model: Metric that picks the best checkpoint: the one the GLUE paper reports first
            (F1 for the unbalanced paraphrase tasks, MCC for CoLA, Pearson for STS-B, else accuracy).
        tsv: Layout of ``train.tsv`` and the dev files.
        test_tsv: Layout of the test files, which differ (an ``index`` column, no label).
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    metric_for_best_model: str
    tsv: TsvLayout
    test_tsv: TsvLayout
    validation_splits: tuple[str, ...] = ("validation",)
    dev_files: tuple[str, ...] = ("dev.tsv",)
    test_splits: tuple[str, ...] = ("test",)
    test_files: tuple[str, ...] = ("test.tsv",)
    submission_files: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.submission_files:
            object.__setattr__(self, "submission_files", (f"{self.folder}.tsv",))
        if len(self.submission_files) != len(self.test_splits):
            raise ValueError(f"{self.name}: one submission file per test split is needed")

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        """Model output size: one score for regression."""
        return 1 if self.is_regression else len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    @property
    def eval_split(self) -> str:
        """The split evaluated during training (MNLI: matched)."""
        return self.validation_splits[0]

    @property
    def split_files(self) -> dict[str, str]:
        """Hub split name -> local file name, for every split that needs labels."""
        return {"train": "train.tsv", **dict(zip(self.validation_splits, self.dev_files, strict=True))}

    @property
    def features(self) -> datasets.Features:
        """The Hub schema: text columns, then ``label``, then ``idx``."""
        label = (
            datasets.Value("float32") if self.is_regression else datasets.ClassLabel(names=list(self.label_names))
        )
        text = {col: datasets.Value("string") for col in self.text_columns}
        return datasets.Features({**text, "label": label, "idx": datasets.Value("int32")})


def _task(name, folder, text_columns, label_names, metric_names, best, tsv, test_text=None, **splits) -> GlueTask:
    # Test files always have a header; they name their text columns as train does, except CoLA's.
    test_tsv = TsvLayout(header=True, text=test_text or tsv.text)
    return GlueTask(name, folder, text_columns, label_names, metric_names, best, tsv, test_tsv, **splits)


_ACC = ("accuracy",)
_ACC_F1 = ("accuracy", "f1")
_ENTAIL = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        # CoLA train/dev are headerless: source, label, original mark, sentence.
        _task("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
              "matthews_correlation", TsvLayout(False, (3,), 1, numeric_labels=True), test_text=("sentence",)),
        _task("sst2", "SST-2", ("sentence",), ("negative", "positive"), _ACC, "accuracy",
              TsvLayout(True, ("sentence",), "label", numeric_labels=True)),
        _task("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), _ACC_F1, "f1",
              TsvLayout(True, ("#1 String", "#2 String"), "Quality", numeric_labels=True)),
        _task("stsb", "STS-B", ("sentence1", "sentence2"), (), ("pearson", "spearmanr"), "pearson",
              TsvLayout(True, ("sentence1", "sentence2"), "score")),
        _task("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), _ACC_F1, "f1",
              TsvLayout(True, ("question1", "question2"), "is_duplicate", numeric_labels=True)),
        # MNLI: gold_label is the last column of both train (after label1) and dev (after label1..label5).
        _task("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), _ACC,
              "accuracy", TsvLayout(True, ("sentence1", "sentence2"), "gold_label"),
              validation_splits=("validation_matched", "validation_mismatched"),
              dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
              test_splits=("test_matched", "test_mismatched"),
              test_files=("test_matched.tsv", "test_mismatched.tsv"),
              submission_files=("MNLI-m.tsv", "MNLI-mm.tsv")),
        _task("qnli", "QNLI", ("question", "sentence"), _ENTAIL, _ACC, "accuracy",
              TsvLayout(True, ("question", "sentence"), "label")),
        _task("rte", "RTE", ("sentence1", "sentence2"), _ENTAIL, _ACC, "accuracy",
              TsvLayout(True, ("sentence1", "sentence2"), "label")),
        # WNLI's ids are the reverse of RTE's: 1 is entailment, as in the original files.
        _task("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), _ACC, "accuracy",
              TsvLayout(True, ("sentence1", "sentence2"), "label", numeric_labels=True)),
    )
}


def get_task(name: str | GlueTask) -> GlueTask:
    """Look a task up by name, case-insensitively; the folder spellings ``SST-2`` and ``STS-B`` also work."""
    if isinstance(name, GlueTask):
        return name
    key = str(name).strip().lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise UnknownGlueTaskError(f"unknown GLUE task {name!r}; valid tasks: {', '.join(sorted(GLUE_TASKS))}")
    return GLUE_TASKS[key]


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


# Errors that mean "the Hub cannot be reached" (no network, offline mode, nothing cached), as opposed to a
# bug or a bad argument, which should surface unchanged.
_HUB_UNREACHABLE = (ConnectionError, TimeoutError, LocalEntryNotFoundError)


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
        except _HUB_UNREACHABLE as exc:
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
