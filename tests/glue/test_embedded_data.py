"""The embedded RTE / MRPC copy, the order of the data sources, and the main job on a fresh clone with no network.

The sha256 values are read from the data README (the provenance record) and recomputed here with hashlib; where the
project's offline GLUE copy (../shared/glue) is present, the files must equal it byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from adasam_hf.glue.data import EMBEDDED_GLUE_DIR, GlueSource, find_glue_source, load_glue
from adasam_hf.glue.tasks import GlueDataError

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "glue"


def readme_table() -> dict[str, tuple[int, int, str]]:
    """file -> (rows, bytes, sha256), from adasam_hf/glue/glue_data/README.md."""
    text = (EMBEDDED_GLUE_DIR / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+/\w+\.tsv)` \| (\d+) \| [^|]+ \| (\d+) \| `([0-9a-f]{64})` \|$", text, re.M)
    return {name: (int(n), int(size), digest) for name, n, size, digest in rows}


def test_the_readme_lists_exactly_the_embedded_files():
    on_disk = sorted(str(p.relative_to(EMBEDDED_GLUE_DIR)) for p in EMBEDDED_GLUE_DIR.rglob("*.tsv"))
    assert sorted(readme_table()) == on_disk == ["MRPC/dev.tsv", "MRPC/train.tsv", "RTE/dev.tsv", "RTE/train.tsv"]


@pytest.mark.parametrize("name", ["RTE/train.tsv", "RTE/dev.tsv", "MRPC/train.tsv", "MRPC/dev.tsv"])
def test_embedded_file_matches_its_recorded_size_rows_and_sha256(name):
    rows, size, digest = readme_table()[name]
    data = (EMBEDDED_GLUE_DIR / name).read_bytes()
    assert len(data) == size and hashlib.sha256(data).hexdigest() == digest
    assert data.count(b"\n") == rows + 1  # the header, then one line per row; every line ends with LF
    if SHARED.is_dir():
        assert data == (SHARED / name).read_bytes()


def test_the_package_ships_the_data_and_the_metric_module():
    import tomllib

    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {"glue_data/README.md", "glue_data/*/*.tsv", "evaluate_modules/glue/*.py"}
    assert set(package_data["adasam_hf.glue"]) >= shipped


# --------------------------------------------------------------------------------------------- source order


def rte_folder(root: Path, n_dev: int) -> Path:
    header = "index\tsentence1\tsentence2\tlabel\n"
    (root / "RTE").mkdir(parents=True)
    (root / "RTE" / "train.tsv").write_text(header + "0\tA man sleeps.\tA man rests.\tentailment\n")
    (root / "RTE" / "dev.tsv").write_text(header + "".join(f"{i}\tIt rains.\tIt is dry.\tnot_entailment\n"
                                                           for i in range(n_dev)))
    return root


@pytest.fixture
def no_hub(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the Hub must not be asked")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.delenv("GLUE_DIR", raising=False)


def test_data_dir_then_glue_dir_then_embedded(tmp_path, monkeypatch, no_hub):
    given, env = rte_folder(tmp_path / "given", 2), rte_folder(tmp_path / "env", 3)
    assert find_glue_source("rte") == GlueSource("embedded", EMBEDDED_GLUE_DIR)
    assert load_glue("rte")["validation"].num_rows == 277  # the real RTE dev set
    monkeypatch.setenv("GLUE_DIR", str(env))
    assert find_glue_source("rte") == GlueSource("GLUE_DIR", env)
    assert load_glue("rte")["validation"].num_rows == 3
    assert find_glue_source("rte", given) == GlueSource("data_dir", given)
    assert load_glue("rte", data_dir=given)["validation"].num_rows == 2
    monkeypatch.setenv("GLUE_DIR", "")  # an empty variable is no folder
    assert find_glue_source("mrpc").kind == "embedded"


def test_tasks_not_embedded_go_to_the_hub_and_a_flag_forces_it(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or datasets.DatasetDict())
    assert find_glue_source("cola") == GlueSource("hub")
    load_glue("rte", from_hub=True)
    load_glue("cola")
    assert calls == [("nyu-mll/glue", "rte"), ("nyu-mll/glue", "cola")]
    monkeypatch.setenv("GLUE_DIR", "/somewhere")
    assert find_glue_source("rte", from_hub=True) == GlueSource("hub")  # the flag beats the environment
    with pytest.raises(GlueDataError, match="pass one of --data_dir .* and --from_hub"):
        find_glue_source("rte", "/elsewhere", from_hub=True)


def test_provenance_records_the_source_and_the_sha256_of_each_file_read(tmp_path, no_hub):
    root = rte_folder(tmp_path / "glue", 2)
    (root / "RTE" / "test.tsv").write_text("index\tsentence1\tsentence2\n0\tA.\tB.\n")
    source = find_glue_source("rte", root)
    got = source.provenance("rte", source.load("rte"))
    files = [root / "RTE" / name for name in ("train.tsv", "dev.tsv", "test.tsv")]
    assert got == {"data_source": "data_dir", "data_dir": str(root),
                   "data_files": {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}}


# --------------------------------------------------------------------------------------------- a fresh clone


@pytest.mark.slow
def test_the_main_command_on_a_fresh_clone_with_nothing_beside_it(tmp_path):
    """The README's main command, shortened, from a copy of the package, configs and scripts alone, in a folder
    with no ../shared, no GLUE_DIR and no Hub: it trains on the embedded RTE and writes results.json."""
    clone = tmp_path / "clone"
    for part in ("adasam_hf", "configs", "scripts"):
        shutil.copytree(REPO / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k != "GLUE_DIR"}
    env.update(PYTHONPATH=str(clone), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "scripts/finetune.py", "--task", "rte", "--optimizer", "adasam", "--max_steps", "2",
         "--max_train_samples", "32", "--max_eval_samples", "32", "--max_seq_length", "64", "--report_to", "none"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = (clone / "runs").iterdir()
    results = json.loads((out / "results.json").read_text())
    assert results["data_source"] == "embedded"
    assert results["data_dir"] == str(clone / "adasam_hf" / "glue" / "glue_data")
    assert set(results["data_files"].values()) == {d for n, (_, _, d) in readme_table().items() if "RTE" in n}
    assert 0 <= results["eval_accuracy"] <= 1
