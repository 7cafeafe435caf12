"""docs/ARCHITECTURE.md names every module of the package, so a newcomer's map never goes stale."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "reelq"
# Packages documented by one row for the whole package (private modules of one idea).
ONE_ROW_PACKAGES = ("client/", "engines/", "database/migrations/")


def _modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if path.name in ("__init__.py", "__main__.py") or relative.startswith(ONE_ROW_PACKAGES):
            continue
        found.append(relative)
    return found


def test_architecture_names_every_module() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`([a-z0-9_/]+\.py)`", text))
    missing = [module for module in _modules() if module not in named]
    assert not missing, f"docs/ARCHITECTURE.md does not name: {missing}"
    for package in ONE_ROW_PACKAGES:
        assert f"`{package}" in text, package


def test_architecture_names_no_module_that_is_gone() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    for module in re.findall(r"`([a-z_/]+\.py)`", table):
        assert (PACKAGE / module).is_file(), f"docs/ARCHITECTURE.md names {module}, which does not exist"
