"""Shared tools of the adversarial suite: run the CLI the way a hostile user would, and check the
exact outcome — the one-line message or the rows, the exit status, no traceback.

Everything the cases feed emoclip is generated here in code (no binary fixtures are committed).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import EMOTIONS, TINY_CLI, make_split_data, noise_image

REPO = Path(__file__).resolve().parents[2]
ONE_LINE_ERROR = re.compile(r"^emoclip: error: [^\n]+; [^\n]+\n$")


@dataclass
class Outcome:
    """What a run of the CLI produced."""

    status: int
    stdout: str
    stderr: str
    exception: BaseException | None = None

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("emoclip: error:")]

    def rows(self) -> list[dict]:
        """JSON Lines rows of stdout (each line must be valid JSON)."""
        return [json.loads(line) for line in self.stdout.split("\n") if line]

    def csv_rows(self) -> list[dict]:
        return list(csv.DictReader(io.StringIO(self.stdout, newline="")))


def cli(*args, input: str | None = None) -> Outcome:
    """The emoclip CLI in-process; an exception escaping it (a traceback) is kept, not raised."""
    from click.testing import CliRunner

    from emoclip.cli.main import main

    result = CliRunner().invoke(main, [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args],
                                input=input, catch_exceptions=True)
    exception = None if result.exception is None or isinstance(result.exception, SystemExit) else result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr, exception)


def cli_process(*args, env: dict | None = None, timeout: float = 60, **popen) -> subprocess.Popen:
    """The emoclip CLI in a child process (signals, kills)."""
    command = [sys.executable, "-m", "emoclip", *(os.fspath(a) if isinstance(a, os.PathLike) else str(a)
                                                      for a in args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, **(env or {})}, **popen)


def assert_no_traceback(outcome: Outcome) -> None:
    assert outcome.exception is None, f"exception escaped: {outcome.exception!r}"
    for stream in (outcome.stdout, outcome.stderr):
        assert "Traceback" not in stream
        assert "weights_only=False" not in stream


def assert_refused(outcome: Outcome, pattern: str, status: int = 2) -> str:
    """One line ``emoclip: error: <what>; <fix>`` matching ``pattern``, the exit status, no traceback."""
    assert_no_traceback(outcome)
    assert outcome.status == status, (outcome.status, outcome.stderr)
    assert len(outcome.errors) == 1, outcome.stderr
    line = outcome.errors[0] + "\n"
    assert ONE_LINE_ERROR.match(line), line
    assert len(line) < 700, len(line)
    assert re.search(pattern, line), (pattern, line)
    return line


def assert_usage_error(outcome: Outcome, pattern: str) -> None:
    """Click's own refusal of a bad option value, as emoclip's one line (exit 2, '… Invalid value …; see --help')."""
    line = assert_refused(outcome, pattern)
    assert "--help" in line, line


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) → SHA-256: 'no lost or changed output'."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def good_jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(*size, seed=seed).save(path, format="JPEG")
    return path


@pytest.fixture(scope="session")
def labelled(tmp_path_factory) -> tuple[Path, Path]:
    """(root, split file): six emotion folders of 3 noise images each, split 2:1."""
    return make_split_data(tmp_path_factory.mktemp("adv-data"), per_class=3)


TINY = TINY_CLI
__all__ = ["EMOTIONS", "TINY", "Outcome", "assert_no_traceback", "assert_refused", "assert_usage_error", "cli",
           "cli_process", "good_jpeg", "temporaries", "tree_digest"]
