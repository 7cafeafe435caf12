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


# ---- what comments in src/ cite ------------------------------------------------------------------------

_SOURCES = sorted(PACKAGE.rglob("*.py"))


def _cited(pattern: str) -> list[str]:
    found = []
    for path in _SOURCES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_code_cites_no_issue_numbers() -> None:
    """An issue number means nothing to a reader of the code: the why goes in the comment itself."""
    cited = _cited(r"(?i)\bissues? #?\d+|\(#\d+\)")
    assert not cited, "\n".join(cited)


def test_code_cites_no_file_outside_the_repository() -> None:
    cited = _cited(r"shared/(SPEC|DESIGN)|DESIGN\.md|\.\./shared")
    assert not cited, "\n".join(cited)


def test_every_spec_citation_names_a_section_of_docs_spec() -> None:
    """"SPEC §N" in the code is docs/SPEC.md's section N (the file says so), with the quoted heading or
    bold lead-in where one is given."""
    spec = (ROOT / "docs" / "SPEC.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", spec, re.MULTILINE))
    for citation in _cited(r"SPEC ?§"):
        for number, title in re.findall(r'SPEC ?§ ?(\d+)(?: "([^"]+)")?', citation):
            assert number in sections, f"no section {number} in docs/SPEC.md: {citation}"
            if title:
                assert title.lower() in spec.lower(), f"docs/SPEC.md has no {title!r}: {citation}"


def test_module_paths_in_comments_exist() -> None:
    """A path like `dispatch/broker.py` in a comment names a module of the package (or the tests); a bare
    `name.py` names one somewhere in the package."""
    modules = {path.relative_to(PACKAGE).as_posix() for path in _SOURCES}
    names = {path.name for path in _SOURCES}
    missing = []
    for path in _SOURCES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for name in re.findall(r"(?<![\w./-])((?:[a-z_][a-z0-9_]*/)*[a-z_][a-z0-9_]*\.py)\b", line):
                name = name.removeprefix("reelq/")
                known = name in names if "/" not in name else name in modules or (ROOT / name).is_file()
                if not known:
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {name}")
    assert not missing, "\n".join(missing)
