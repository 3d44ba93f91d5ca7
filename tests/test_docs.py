"""Docs generated from code stay in step with it."""

from pathlib import Path

from adamscope.tables.docs import render

ROOT = Path(__file__).resolve().parents[1]


def test_tables_md_matches_schema():
    assert (ROOT / "docs" / "tables.md").read_text() == render(), (
        "docs/tables.md is stale: python -m adamscope.tables.docs > docs/tables.md"
    )


def test_readme_map_of_the_code_matches_the_tree():
    """Every top-level module and subpackage of adamscope/ is in the README's map, and every
    name the map gives under adamscope/ exists."""
    import re

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Map of the code", 1)[1].split("```", 2)[1]
    lines = block.splitlines()
    start = lines.index("adamscope/")
    pkg_lines = []
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        pkg_lines.append(line)
    entries = {m.group(1) for line in pkg_lines if (m := re.match(r"^  (\S+)", line))}
    pkg = ROOT / "adamscope"
    actual = {p.name + "/" for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    actual |= {p.name for p in pkg.glob("*.py") if p.name not in ("__main__.py", "_version.py")}
    assert entries == actual, (sorted(entries - actual), sorted(actual - entries))
    for line in pkg_lines:  # file names mentioned in a subpackage's description exist there
        m = re.match(r"^  (\S+)/\s", line)
        if m:
            for f in re.findall(r"\b([a-z_]+\.py)\b", line):
                assert (pkg / m.group(1) / f).exists(), f"{m.group(1)}/{f}"
    for top in ("experiments/", "fixtures/", "docs/", "tools/"):
        assert top in block and (ROOT / top).is_dir()
