"""Reading the report's markdown back in tests (test_report, test_figures)."""
from __future__ import annotations


def md_table(text: str, title: str) -> dict[str, list[str]]:
    """Rows (label -> cells) of the markdown table under the bold title that starts with `title`."""
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(f"**{title}"))
    rows = {}
    for ln in lines[i + 4:]:
        if not ln.startswith("| "):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows
