"""The package's architecture holds: the layers contract, no import cycle, no private name used
across modules, and recipes found by name.

The layers themselves are import-linter's contract in pyproject.toml (``./dev/test`` runs
``lint-imports``); this file runs it too, and adds what a layers contract cannot see: cycles inside
a layer (local imports included — grimp reads function bodies) and ``_private`` names imported
from another module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from emoclip.core.errors import EmoclipError
from emoclip.recipes import KINDS, RECIPES_DIR, is_recipe_name, list_recipes, recipe_path

SRC = Path(__file__).resolve().parents[1] / "src" / "emoclip"


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("emoclip", cache_dir=None)


def test_the_layers_contract_is_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint_imports), "--no-cache"], capture_output=True, text=True, timeout=300,
                          cwd=SRC.parents[1])
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 kept, 0 broken" in done.stdout


def test_no_import_cycle_between_modules(graph):
    cycles = sorted(f"{a} <-> {b}" for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                    if a < b and graph.chain_exists(importer=b, imported=a)
                    and not (a.startswith(b + ".") or b.startswith(a + ".")))
    assert not cycles, f"import cycles (break them by moving the shared part down a layer): {cycles}"


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for file in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emoclip"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offenders.append(f"{file.relative_to(SRC.parent)}:{node.lineno} {node.module} {private}")
    assert not offenders, f"private names imported across modules (make them public or move them): {offenders}"


def test_recipe_names_are_unique_across_kinds_and_every_file_is_one():
    files = [p for kind in KINDS for p in (RECIPES_DIR / kind).glob("*.yaml")]
    assert len(files) == len(list_recipes()) == len({p.stem for p in files})
    assert {p.parent.name for p in list_recipes().values()} == set(KINDS)
    assert set(list_recipes("methods")) >= {"ptdpc-paper", "ptdpc-release", "coop", "clipe-ce", "linear-probe", "ugrie"}


def test_every_recipe_reads_as_a_config_or_a_sweep():
    from emoclip.training.experiment import read_config
    from emoclip.training.sweep import read_grid

    for name, path in list_recipes().items():
        data = read_grid(path) if path.parent.name == "sweeps" else read_config(name)
        assert data, f"recipe {name} is empty"


def test_a_recipe_is_found_by_name_with_or_without_suffix_and_an_unknown_one_lists_them():
    assert recipe_path("ptdpc-paper") == recipe_path("ptdpc-paper.yaml") == RECIPES_DIR / "methods" / "ptdpc-paper.yaml"
    assert is_recipe_name("emotionroi6.yaml") and not is_recipe_name("configs/methods/ptdpc-paper.yaml")
    with pytest.raises(EmoclipError) as caught:
        recipe_path("ptdpc-papr")
    message = str(caught.value)
    assert "\n" not in message and "ptdpc-paper" in message and "emotionroi6" in message


def test_config_and_sweep_entries_name_recipes_from_any_folder(tmp_path, monkeypatch):
    from emoclip.training.experiment import read_configs

    monkeypatch.chdir(tmp_path)  # no configs/ link here: the names resolve to the package's recipes
    merged = read_configs(["emotionroi6", "ptdpc-paper.yaml"])
    assert merged["method"] == "ptdpc" and merged["taxonomy"] == "emotionroi6"
    (tmp_path / "ptdpc-paper.yaml").write_text("method: coop\n")  # a file of that name in the folder wins
    assert read_configs(["ptdpc-paper.yaml"])["method"] == "coop"


def test_train_recipe_option_merges_before_config_and_refuses_unknown_names(tmp_path):
    from tests.conftest import run_cli

    bad = run_cli("train", "--recipe", "nope", "--out", tmp_path / "x")
    assert bad.exit_code == 2
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("emoclip: error: unknown recipe 'nope'") and "coop" in lines[0]


def test_sweep_takes_a_shipped_sweep_by_name(tmp_path, monkeypatch):
    from tests.conftest import run_cli

    monkeypatch.chdir(tmp_path)
    planned = run_cli("sweep", "emotion6", "--dry-run")
    assert planned.exit_code == 0, planned.output
    assert planned.output.startswith("sweep: ") and " runs, 0 finished" in planned.output
    missing = run_cli("sweep", "no-such-sweep.yaml", "--dry-run")
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_listing_recipes_imports_no_torch():
    probe = "import sys, emoclip.recipes as r; assert r.list_recipes(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
