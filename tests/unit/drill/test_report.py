"""The drill report reads as a person writes it: figures in words, timeline labels that never overlap."""

from __future__ import annotations

from dumont.drill.html import describe_figure, label_rows


def test_figures_are_written_in_words_never_as_python_reprs() -> None:
    assert describe_figure({"epoch": 3, "catch_up_files": 2}) == "epoch 3, catch up files 2"
    assert describe_figure(["rented 123 at $0.20/h", "rented 124"]) == "rented 123 at $0.20/h; rented 124"
    assert describe_figure(0.12345) == "0.123"
    assert describe_figure(2.0) == "2"
    assert describe_figure(True) == "yes"
    assert describe_figure(None) == describe_figure([]) == describe_figure({}) == "none"
    nested = describe_figure({"gpu": {"name": "vast-1", "port": 22}})
    assert "{" not in nested and "'" not in nested


def test_labels_of_short_phases_go_on_further_rows_and_long_ones_share_the_first() -> None:
    # Normal operation is long; failure, detection and failover are a pixel or two apart; recovery is far on.
    starts = [150.0, 160.0, 700.0, 702.0, 705.0, 900.0]
    widths = [60.0, 60.0, 50.0, 50.0, 50.0, 60.0]
    rows = label_rows(starts, widths)
    assert rows == [0, 1, 0, 1, 2, 0]
    placed: dict[int, list[tuple[float, float]]] = {}
    for start, width, row in zip(starts, widths, rows, strict=True):
        for other_start, other_end in placed.get(row, []):
            assert start >= other_end or start + width <= other_start, "two labels overlap on one row"
        placed.setdefault(row, []).append((start, start + width))
