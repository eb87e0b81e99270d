"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and each one catches the import it forbids."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("accounts", "beautyai_site", "inference_app", "models_app", "system_app")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(cwd)}, capture_output=True, text=True, timeout=120,
    )


def test_the_code_keeps_every_import_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture
def copy_of_the_code(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


@pytest.mark.parametrize(("module", "bad_import", "contract"), [
    ("models_app/serving/hardware.py", "import django", "The serving core imports no Django and no app"),
    ("models_app/serving/hardware.py", "import models_app.runtime", "The serving core imports no Django and no app"),
    ("system_app/probes.py", "from models_app.serving import hardware", "Only models_app imports the serving core"),
    ("inference_app/services.py", "from models_app import runtime", "Only models_app imports models_app.runtime"),
    ("models_app/runtime.py", "import system_app.models", "models_app imports neither inference_app nor system_app"),
    ("beautyai_site/api/envelope.py", "import accounts.models", "The API plumbing (beautyai_site.api) imports no app"),
])
def test_a_forbidden_import_breaks_its_contract(copy_of_the_code, module, bad_import, contract):
    with open(copy_of_the_code / module, "a", encoding="utf-8") as source:
        source.write(f"\n{bad_import}  # the forbidden import under test\n")
    result = lint_imports(copy_of_the_code)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout
