"""GLUE task facts: one table, `GLUE_TASKS`, so the rest of the package never branches on task names.

Every per-task fact lives here (text columns, labels, splits, metrics, the metric that picks the best checkpoint,
the layout of the original TSV files), spelled as on the Hub (``nyu-mll/glue``) so local and Hub data are
interchangeable. The YAML files under ``configs/tasks/`` hold only training settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets

__all__ = ["GLUE_TASKS", "GlueDataError", "GlueTask", "TsvLayout", "UnknownGlueTaskError", "get_task"]


class GlueDataError(RuntimeError):
    """Base of every data error here, so a CLI can catch them all with one clause."""


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
