"""The README's "Public API" list is `__all__`, and its "Where things are" table names real paths."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import kf2v_tasks

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def _table_rows(section: str) -> list[list[str]]:
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip(" |") for cell in row] for row in rows[2:]]  # header, rule


def test_public_api_list_is_all():
    listed: dict[str, set[str]] = {}
    for where, names in _table_rows(_section("Public API")):
        module = re.match(r"`([\w.]+)`", where).group(1)
        listed.setdefault(module, set()).update(re.findall(r"`(\w+)`", names))
    assert listed.pop("kf2v_tasks") == set(kf2v_tasks.__all__) - {"__version__"}
    for module, names in listed.items():
        assert module.startswith("kf2v_flows.")
        assert names == set(importlib.import_module(module).__all__), module


def test_where_things_are_names_real_paths():
    folders = _table_rows(_section("Where things are"))
    paths = [p for row in folders for p in re.findall(r"`([\w./-]+/[\w./-]*)`", row[0])]
    assert len(paths) > 10
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert missing == []
    # Every library folder is in the table.
    packages = {f"kf2v_tasks/{d.name}/" for d in (ROOT / "kf2v_tasks").iterdir() if d.is_dir()}
    packages -= {"kf2v_tasks/__pycache__/"}
    assert packages <= set(paths)
