"""What a `pip install` user gets: the wheel carries the recipes, templates and data; its declared
dependencies cover every import; the version and the CHANGELOG name the on-disk formats.

The wheel test builds the wheel, installs it into a fresh venv (the package from the wheel only;
its dependencies, already installed here, are reused through a path entry so the test is quick and
offline) and runs the installed `emoclip` from a folder outside the checkout: a recipe by name,
then tagging a folder with the trained checkpoint.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import make_split_data

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SRC = REPO / "src" / "emoclip"


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> set[str]:
    project = PYPROJECT["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += [s for s in extra if not s.startswith("emoclip[")]
    return {_requirement_name(s) for s in specs}


def _third_party_imports() -> dict[str, str]:
    """Top-level module name → a file importing it, for every non-stdlib, non-emoclip import in the package."""
    found: dict[str, str] = {}
    for file in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [])
            for name in names:
                top = name.split(".")[0]
                if top != "emoclip" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(file.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared():
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = {}
    for module, where in sorted(_third_party_imports().items()):
        owners = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not owners & declared:
            missing[module] = where
    assert not missing, f"imported but not declared in pyproject.toml (module: first importer): {missing}"


def test_project_dependencies_are_ranges_not_pins():
    pinned = [s for s in PYPROJECT["project"]["dependencies"] if "==" in s]
    assert not pinned, f"exact pins belong in uv.lock, not [project]: {pinned}"


def test_changelog_names_this_version_and_the_format_constants():
    from emoclip.encoder.cache import DECODER_VERSION
    from emoclip.methods.checkpoint import FORMAT_VERSION
    from emoclip.tagging.shards import MANIFEST_FORMAT
    from emoclip.training.trainer import STATE_FORMAT

    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    newest = re.search(r"^## (\S+)\n\n(Formats: [^\n]+)", text, re.M)
    assert newest, "CHANGELOG.md needs '## VERSION' then a 'Formats: …' line"
    assert newest.group(1) == PYPROJECT["project"]["version"]
    formats = newest.group(2)
    assert f"checkpoint {FORMAT_VERSION}" in formats and f"manifest {MANIFEST_FORMAT}" in formats
    assert f"training state {STATE_FORMAT}" in formats and f"feature cache decoder {DECODER_VERSION}" in formats


def test_no_pointer_to_a_missing_file():
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    for name in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", text):
        assert (REPO / name).is_file(), f"pyproject.toml points at {name}, which does not exist"


def _uv() -> list[str] | None:
    """How ./dev/setup runs uv here (a `uv` on PATH, or `python3 -m uv`), or None."""
    if shutil.which("uv"):
        return ["uv"]
    for python in (sys.executable, shutil.which("python3")):
        if python and subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [python, "-m", "uv"]
    return None


def _build_wheel(out: Path) -> Path:
    uv = _uv()
    if uv is None:
        pytest.skip("uv is not installed (./dev/setup installs it); it builds the wheel offline")
    done = subprocess.run([*uv, "build", "--wheel", "--offline", "--out-dir", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = out.glob("emoclip-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.mark.slow
def test_wheel_carries_recipes_templates_and_data(wheel):
    from emoclip.recipes import list_recipes

    names = set(zipfile.ZipFile(wheel).namelist())
    for path in list_recipes().values():
        assert f"emoclip/recipes/{path.parent.name}/{path.name}" in names
    for data in ("emoclip/py.typed", "emoclip/labels/templates.yaml", "emoclip/labels/taxonomies/mikels8.yaml",
                 "emoclip/methods/ugrie/emotion_templates.yaml", "emoclip/encoder/model_configs/tiny.json",
                 "emoclip/serve/static/index.html"):
        assert data in names, f"{data} is not in the wheel"
    assert not any(n.startswith(("tests/", "configs/", "benchmarks/")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "emoclip = emoclip.cli.main:main" in entry_points


def _fresh_venv(root: Path, wheel: Path) -> Path:
    """A new venv holding emoclip from ``wheel`` only; its dependencies come from this environment."""
    uv = _uv()
    assert uv is not None  # the wheel was built with it
    venv = root / "venv"
    subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # A plain path entry: the packages installed here, but not this checkout's editable emoclip (its
    # own .pth file is not processed from an added directory), so `import emoclip` finds the wheel.
    (purelib / "_emoclip_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*uv, "pip", "install", "--quiet", "--offline", "--no-deps", "--python", str(python), str(wheel)],
                   check=True, timeout=300)
    return venv


@pytest.mark.slow
def test_fresh_venv_with_the_wheel_runs_a_recipe_by_name_and_tags_a_folder(wheel, tmp_path):
    venv = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "work"  # outside the checkout: no configs/ link, no src/ on the path
    work.mkdir()
    root, split = make_split_data(work, per_class=4)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import emoclip; print(emoclip.__file__)"],
                           capture_output=True, text=True, cwd=work, timeout=120)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel's copy, not src/

    emoclip = str(venv / "bin" / "emoclip")
    tiny = ["--model", "tiny", "--pretrained", "random", "--device", "cpu"]
    trained = subprocess.run([emoclip, "train", "--recipe", "linear-probe", *tiny, "--root", str(root),
                              "--split-file", str(split), "-t", "emotionroi6", "--no-cache", "--out", "run"],
                             capture_output=True, text=True, cwd=work, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "linear-probe: fitted directly" in trained.stdout
    assert (work / "run" / "model.safetensors").is_file() and (work / "run" / "model.json").is_file()

    tagged = subprocess.run([emoclip, "predict", str(root / "joy"), "--checkpoint", "run", "--device", "cpu",
                             "--format", "csv"], capture_output=True, text=True, cwd=work, timeout=600)
    assert tagged.returncode == 0, tagged.stderr[-2000:]
    rows = tagged.stdout.splitlines()
    assert rows[0].startswith("path,label") and len(rows) == 1 + len(list((root / "joy").iterdir()))

    unknown = subprocess.run([emoclip, "train", "--recipe", "no-such-recipe", "--out", "x"],
                             capture_output=True, text=True, cwd=work, timeout=600)
    assert unknown.returncode == 2
    assert unknown.stderr.count("\n") == 1 and "ptdpc-paper" in unknown.stderr  # one line listing the names
