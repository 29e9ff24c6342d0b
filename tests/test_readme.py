"""The README's Quick start examples run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def quick_start_blocks(text: str) -> list[str]:
    """The ```python blocks under the first heading containing "Quick start", up to the next
    heading of the same or a higher level."""
    lines = text.splitlines()
    start = level = None
    for i, line in enumerate(lines):
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m and re.search(r"quick\s*-?\s*start", m.group(2), re.IGNORECASE):
            start, level = i + 1, len(m.group(1))
            break
    if start is None:
        return []
    section = []
    in_code = False
    for line in lines[start:]:
        if line.lstrip().startswith("```"):
            in_code = not in_code
        m = re.match(r"^(#{1,6})\s", line)
        if not in_code and m and len(m.group(1)) <= level:
            break
        section.append(line)
    return re.findall(
        r"^```python[^\n]*\n(.*?)^```", "\n".join(section) + "\n", re.MULTILINE | re.DOTALL
    )


def _blocks():
    if not README.is_file():
        return []
    return quick_start_blocks(README.read_text(encoding="utf-8"))


def test_quick_start_parser():
    text = (
        "# x\n## Quick start\n```python\na = 1\n```\ntext\n```bash\nls\n```\n"
        "### sub\n```python\nb = a + 1\n```\n## Next\n```python\nraise SystemExit\n```\n"
    )
    assert quick_start_blocks(text) == ["a = 1\n", "b = a + 1\n"]


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    blocks = _blocks()
    if not blocks:
        pytest.skip("README.md has no ```python blocks under a 'Quick start' heading yet")
    monkeypatch.chdir(tmp_path)  # examples may write files
    namespace: dict = {"__name__": "__readme__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md quick start block {i + 1}", "exec"), namespace)
