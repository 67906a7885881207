"""Every case of tests/helpers/hostile_cases.py: exit code 2 and one line naming the value (or a run that trains,
with the warning it owes), no traceback, nothing on disk lost.

A refused case runs `scripts/finetune.py`'s or `finetune_lm.py`'s `main` in this process (the same code the scripts
run), with stderr captured at the file-descriptor level; a case that trains, and the torchrun case, run the real
script in a subprocess. What "handled as promised" means is `hostile_cases.judge`, shared with the before/after
table in docs/hostile-input.md.
"""

from __future__ import annotations

import io
import logging
import sys
import time
import traceback
from pathlib import Path

import pytest

from tests.helpers import hostile_cases
from tests.helpers.hostile_cases import CASES, ERROR, Outcome, Workspace, try_case

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("hostile"), run=None)


def in_process(capfd, monkeypatch):
    from adasam_hf import cli, lm

    mains = {"glue": cli.main, "lm": lm.main}
    torchrun = hostile_cases.subprocess_runner(REPO)

    def run(command: str, argv: list, env: dict, cwd: Path) -> Outcome:
        if command == "torchrun-glue":
            return torchrun(command, argv, env, cwd)
        capfd.readouterr()
        _log_to_current_stderr()
        start = time.perf_counter()
        with monkeypatch.context() as m:
            m.chdir(cwd)
            for key, value in env.items():
                m.setenv(key, value) if value else m.delenv(key, raising=False)
            try:
                if command == "python":
                    exec(compile(argv[0], "<case>", "exec"), {"__name__": "__case__"})
                    code = 0
                else:
                    code = mains[command](argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # what a script would show as a traceback
                traceback.print_exc()
                code = 1
        return Outcome(code, capfd.readouterr().err, time.perf_counter() - start)

    return run


def _log_to_current_stderr() -> None:
    """Point the libraries' log handlers at this test's stderr: a handler made during an earlier test still writes
    to that test's captured stream, which is closed by now."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler and not isinstance(handler.stream, io.StringIO):
                handler.stream = sys.stderr  # not setStream: it would flush the closed one


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_handled_as_promised(case, workspace, capfd, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    # Runs that train print through loggers and progress bars that outlive one test's captured stderr: those run
    # as the real script does, in a subprocess; refusals, which print one line, run here.
    workspace.run = in_process(capfd, monkeypatch) if case.expect == ERROR else hostile_cases.subprocess_runner(REPO)
    outcome, problems = try_case(case, workspace, workspace.root / "cwd" / case.name)
    assert not problems, f"{case.name}: {problems}\n{outcome.stderr[:2000]}\n...\n{outcome.stderr[-1500:]}"


def test_every_kind_has_several_members():
    kinds = {}
    for case in CASES:
        kinds[case.kind] = kinds.get(case.kind, 0) + 1
    assert set(kinds) >= {"numbers", "flags", "model/data", "output", "checkpoint", "nan", "library"}
    assert min(n for k, n in kinds.items() if k != "offline data") >= 4, kinds
