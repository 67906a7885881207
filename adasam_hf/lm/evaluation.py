"""Benchmark evaluation of a causal LM with lm-evaluation-harness: ``python scripts/evaluate_lm.py``.

`evaluate_tasks` runs lm-eval on a model already in memory (its `HFLM` wrapper takes a `PreTrainedModel`, peft
models too), so `finetune_lm` can score the model it trains, before and after, in the same process. The task names
are lm-eval's: offline they resolve to the packaged tasks of `adasam_hf.lm.eval_tasks`; with ``--from_hub``, to
lm-eval's own task configs and Hub datasets.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from ..app.command import run_command, set_verbosity
from ..app.errors import ConfigError, check_positive_ints
from ..app.models import resolve_model_path
from ..app.parsing import ArgumentParser, default_output_dir
from ..app.preflight import check_output_dir
from ..app.results import RESULTS_FILE, peak_rss_mb, software_versions
from .arguments import DTYPES, LMModelArguments
from .data import special_token_ids
from .eval_tasks import available_tasks, task_dir
from .model import load_causal_lm

__all__ = ["EvalArguments", "evaluate_lm", "evaluate_tasks", "main", "parse_args", "parse_tasks"]

PROG = "evaluate_lm.py"
DEFAULT_TASKS = "hellaswag,openbookqa,boolq,arc_challenge,mmlu_stem"


def parse_tasks(tasks: str | list[str], from_hub: bool = False) -> list[str]:
    """A comma-separated list (or a list) of task names, each checked.

    Raises:
        ConfigError: an empty list, or a name that is not a task (offline: of the packaged tasks).
    """
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise ConfigError(f"invalid tasks: {tasks!r} (name at least one, e.g. {DEFAULT_TASKS})")
    valid = _hub_tasks() if from_hub else available_tasks()
    unknown = [t for t in names if t not in valid]
    if unknown:
        shown = ", ".join(valid) if len(valid) <= 20 else f"{len(valid)} lm-eval tasks"
        raise ConfigError(f"unknown task {unknown[0]!r} (choose from: {shown})")
    return names


def _hub_tasks() -> list[str]:
    from lm_eval.tasks import TaskManager

    return sorted(TaskManager().all_tasks)


def check_subset_seed(seed: int | None, limit: int | None, names: tuple[str, str]) -> None:
    """A subset seed is an integer in [0, 2**32) and only means something with a limit (`names`: the two flags)."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"invalid {names[0]}: {seed!r} (must be an integer in [0, 2**32 - 1])")
    if limit is None:
        raise ConfigError(f"{names[0]} {seed} needs {names[1]} N (the subset's size); without it every document "
                          "is scored")


def seeded_subsets(tasks: list[str], limit: int, seed: int, manager) -> dict[str, list[int]]:
    """`limit` document indices of each task (each subtask of a group), drawn without replacement by a generator
    seeded with (`seed`, task name), sorted: the same subset for every model, whatever the order of the file
    (lm-eval's own `limit` takes the first N: HellaSwag's validation file puts its 3,243 ActivityNet contexts
    before the WikiHow ones, so its first 200 documents hold no WikiHow one)."""
    sizes = {name: len(task.eval_docs) for name, task in manager.load(list(tasks))["tasks"].items()}
    return {name: sorted(random.Random(f"{seed}/{name}").sample(range(n), min(limit, n))) for name, n in sizes.items()}


def evaluate_tasks(model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 8,
                   from_hub: bool = False, per_document: bool = False,
                   subset_seed: int | None = None) -> dict[str, dict]:
    """Score `model` on `tasks` (zero-shot, log-likelihood multiple choice); ``{task: {"acc", "acc_norm",
    "acc_stderr", "n"}}``, `n` the documents scored (with `limit`, the first `limit` of each task, or with
    `subset_seed` a seeded random `limit` of them (`seeded_subsets`); for ``mmlu_stem``, of each subject). With
    `per_document`, each task also gets ``"documents": {"id", "acc", "acc_norm"}``, one entry per document in a
    fixed order (ids ``task/doc_id``, doc_id the index in the whole split), so two models scored on the same
    documents can be compared pair by pair."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import datasets

    manager = TaskManager() if from_hub else TaskManager(include_path=str(task_dir()), include_defaults=False)
    was_training, bars = model.training, datasets.is_progress_bar_enabled()
    lm_eval_logger = logging.getLogger("lm_eval")
    level = lm_eval_logger.level
    model.eval()
    datasets.disable_progress_bars()  # a bar per MMLU subject's local file would bury the results
    lm_eval_logger.setLevel(logging.ERROR)  # not its warnings about being handed a model object, which we mean
    try:
        # A tokenizer with neither BOS nor EOS (the BERT one of tiny-llama) gets its [CLS], as in training.
        bos, eos = special_token_ids(tokenizer)
        prefix = {} if tokenizer.bos_token_id is not None or tokenizer.eos_token_id is not None else {
            "prefix_token_id": bos if bos is not None else eos}
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **prefix)
        subset = None if subset_seed is None or limit is None else seeded_subsets(tasks, limit, subset_seed, manager)
        out = simple_evaluate(model=lm, tasks=list(tasks), limit=None if subset else limit, samples=subset,
                              task_manager=manager, log_samples=per_document, verbosity="ERROR")
    finally:
        model.train(was_training)
        lm_eval_logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()
    results = {}
    for task in tasks:
        scores = out["results"][task]
        n = _documents(out, task)
        acc = scores["acc,none"]
        stderr = scores.get("acc_stderr,none")
        if not isinstance(stderr, float) or math.isnan(stderr):  # lm-eval gives "N/A" for a single document
            stderr = math.sqrt(acc * (1 - acc) / max(n - 1, 1))
        results[task] = {"acc": acc, "acc_norm": scores.get("acc_norm,none"), "acc_stderr": stderr, "n": n}
        if per_document:
            results[task]["documents"] = _documents_of(out, task)
    return results


def _documents_of(out: dict, task: str) -> dict[str, list]:
    """Per-document acc and acc_norm of a task (of each subtask of a group, in order), sorted by doc_id."""
    subtasks = out.get("group_subtasks", {}).get(task) or [task]
    ids, acc, acc_norm = [], [], []
    for name in subtasks:
        for sample in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
            ids.append(f"{name}/{sample['doc_id']}")
            acc.append(sample["acc"])
            acc_norm.append(sample["acc_norm"])
    return {"id": ids, "acc": acc, "acc_norm": acc_norm}


def _documents(out: dict, task: str) -> int:
    samples = out.get("n-samples", {})
    if task in samples:
        return samples[task]["effective"]
    subtasks = out.get("group_subtasks", {}).get(task, [])
    return sum(_documents(out, t) for t in subtasks)


# --- the command -----------------------------------------------------------------------------------------------


@dataclass
class EvalArguments:
    model_name_or_path: str = field(
        default="smollm2-135m",
        metadata={"help": "A causal LM: 'smollm2-135m' (SmolLM2-135M-Instruct, packaged; offline), a local folder "
                  "(a fine-tuned model, or LoRA adapters saved by finetune_lm.py), or a Hub id."},
    )
    tasks: str = field(default=DEFAULT_TASKS, metadata={"help": "Comma-separated lm-eval task names."})
    limit: int | None = field(default=None, metadata={"help": "Score only the first N documents of each task."})
    subset_seed: int | None = field(
        default=None, metadata={"help": "With --limit: score N documents of each task drawn at random with this seed "
                                "(the same ones for every model) instead of the first N."})
    batch_size: int = field(default=8, metadata={"help": "Documents per forward pass."})
    model_dtype: str = field(default="float32", metadata={"help": "Weights' dtype.", "choices": list(DTYPES)})
    from_hub: bool = field(default=False, metadata={"help": "lm-eval's own tasks and datasets (the Hub)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where results.json goes (runs/eval-<time>)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Write over a previous results.json."})
    seed: int = field(default=1234, metadata={"help": "Seeds torch, numpy and Python."})

    resume_from_checkpoint = None  # what the shared output-folder check asks of training runs
    report_to = ()

    def __post_init__(self):
        self.task_list = parse_tasks(self.tasks, self.from_hub)
        check_positive_ints(self, ("limit", "batch_size"), optional=("limit",))
        check_subset_seed(self.subset_seed, self.limit, ("subset_seed", "--limit"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"invalid seed: {self.seed!r} (must be an integer in [0, 2**32 - 1])")
        if self.model_dtype not in DTYPES:
            raise ConfigError(f"invalid model_dtype: {self.model_dtype!r} (choose from: {', '.join(DTYPES)})")
        self.output_dir = self.output_dir or default_output_dir("eval")


def parse_args(argv: list[str] | None = None) -> tuple[EvalArguments]:
    parser = ArgumentParser((EvalArguments,), prog=PROG, description="Evaluate a causal LM on lm-eval benchmarks.")
    try:
        (args,) = parser.parse_args_into_dataclasses(list(sys.argv[1:] if argv is None else argv),
                                                     look_for_args_file=False)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return (args,)


def load_for_evaluation(name: str, dtype: str):
    """(tokenizer, model) of what finetune_lm.py loads (a folder, a Hub id, an alias), or of a folder of LoRA
    adapters saved by it (over their base)."""
    path = resolve_model_path(name)
    if not (Path(path) / "adapter_config.json").is_file():
        return load_causal_lm(LMModelArguments(model_name_or_path=name, model_dtype=dtype))
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from ..app.models import load_pretrained

    model = load_pretrained("LoRA adapters", name, "smollm2-135m", AutoPeftModelForCausalLM.from_pretrained, path,
                            dtype=DTYPES[dtype])
    tokenizer = load_pretrained("tokenizer", name, "smollm2-135m", AutoTokenizer.from_pretrained, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer, model


def evaluate_lm(args: EvalArguments) -> dict:
    """Evaluate one model; the results, also written to ``<output_dir>/results.json``."""
    import json

    set_verbosity(30)  # warnings
    check_output_dir(args)
    set_seed(args.seed)
    start = time.perf_counter()
    tokenizer, model = load_for_evaluation(args.model_name_or_path, args.model_dtype)
    results = evaluate_tasks(model, tokenizer, args.task_list, args.limit, args.batch_size, args.from_hub,
                             per_document=True, subset_seed=args.subset_seed)
    documents = {task: r.pop("documents") for task, r in results.items()}
    lora = getattr(model, "peft_config", None)
    report = {
        "model_name_or_path": args.model_name_or_path,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "lora": {k: v for k, v in vars(lora["default"]).items() if k in ("r", "lora_alpha", "target_modules")}
        if lora else None,
        "tasks": args.task_list,
        "limit": args.limit,
        "subset_seed": args.subset_seed,
        "task_source": "lm_eval (Hub)" if args.from_hub else f"packaged ({task_dir()})",
        "results": results,
        "documents": documents,  # per document, for paired comparisons between models
        "wall_time_s": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "versions": software_versions(),
    }
    report = json.loads(json.dumps(report, default=str))
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / RESULTS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    for task, r in results.items():
        print(f"{task:16} acc {r['acc']:.4f}  acc_norm {r['acc_norm']:.4f}  +- {r['acc_stderr']:.4f}  n {r['n']}")
    return report


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, evaluate_lm, parse_args, argv)
