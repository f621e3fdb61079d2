"""Tables printed to a pipe or a file keep their columns (rich's default width there, 80, cut them)."""

from __future__ import annotations

from rr_edge.commands._common import PIPED_WIDTH, output_console


def test_a_piped_table_gets_the_piped_width_unless_columns_says_otherwise(monkeypatch, capsys):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setenv("TERM", "dumb")
    assert not output_console().is_terminal  # pytest captures stdout: a pipe as far as rich knows
    assert output_console().width == PIPED_WIDTH and output_console(stderr=True).width == PIPED_WIDTH
    output_console().print("x" * (PIPED_WIDTH - 10))
    assert capsys.readouterr().out.strip() == "x" * (PIPED_WIDTH - 10)  # on one line, not wrapped at 80
    monkeypatch.setenv("COLUMNS", "100")
    assert output_console().width == 100
