"""tests/README.md maps the package's modules to their tests: every test file is named there, and every
path it names exists (so the map cannot fall behind the suite)."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_file_is_named_in_the_map():
    text = (TESTS / "README.md").read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(TESTS)) for path in sorted(TESTS.rglob("test_*.py")) if path.name not in text
    ]
    assert missing == [], f"add these to tests/README.md: {missing}"


def test_every_named_file_exists():
    """A path in the map is a test file (by path under tests/, or by name) or a module of the package."""
    text = (TESTS / "README.md").read_text(encoding="utf-8")
    package = TESTS.parent / "src" / "llm_backbones"
    test_names = {p.name for p in TESTS.rglob("*.py")}
    stale = sorted(
        name
        for name in set(re.findall(r"`([\w/]+\.py)`", text))
        if not ((TESTS / name).is_file() or name in test_names or (package / name).is_file())
    )
    assert stale == [], f"tests/README.md names files that do not exist: {stale}"
