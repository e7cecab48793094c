"""``visionpipe models list`` piped: every name and source whole, one tab-separated line per model."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from visionpipe.services.commands.models import COLUMNS, models
from visionpipe.services.models.registry import BUNDLED


def test_list_piped_is_plain_lines_with_nothing_cut(tmp_path: Path) -> None:
    result = CliRunner().invoke(models, ["list", "--cache-dir", str(tmp_path)])  # not a terminal, as when piped
    assert result.exit_code == 0, result.output
    header, *rows, note = result.output.splitlines()
    assert header.split("\t") == list(COLUMNS)
    assert [row.split("\t") for row in rows] == [
        [m.name, m.description, m.source.package, m.spdx, "missing"] for m in BUNDLED.values()
    ]
    assert "…" not in result.output and "┃" not in result.output and "\x1b[" not in result.output
    assert note.startswith(f"# in {tmp_path}")
