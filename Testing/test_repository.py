"""The repository's own promises: CI runs the README's test command, and the version has one source."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import medseg

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line for block in _bash_blocks(readme) for line in block.splitlines() if "pytest" in line]
    assert commands, "the README shows no test command"
    test_command = commands[0].strip()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert test_command in ci
    for check in ("ruff check", "mypy", "lint-imports", "python -m pytest"):
        assert check in test_command


def test_the_version_has_one_source():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, flags=re.M) and re.search(r'^dynamic = \["version"\]', project, re.M)
    assert 'version = { attr = "medseg.__version__" }' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+", medseg.__version__)
    assert importlib.metadata.version("medseg") == medseg.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{medseg.__version__}]" in changelog
