"""One size formatter: binary units labelled GiB/MiB, the same in the CLI and the window."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from merger_gui.cli.estimate_command import _row
from merger_gui.cli.merge_command import ProgressDisplay
from merger_gui.core.units import GIB, MIB, format_size
from merger_gui.engine.events import DownloadProgress, MergeDone

SIZES = (0, 1, 5 * MIB, GIB // 10 - 1, GIB // 10, 3 * GIB, 24_200 * MIB, 70 * GIB + 123)


def test_format_size_in_binary_units():
    assert format_size(3 * GIB) == "3.0 GiB"
    assert format_size(3 * GIB, 2) == "3.00 GiB"
    assert format_size(0) == "0.0 GiB"
    assert format_size(100 * MIB) == "100.0 MiB"  # not "0.1 GiB"
    assert format_size(GIB // 10) == "0.1 GiB"
    assert format_size(GIB // 2, 2, signed=True) == "+0.50 GiB"
    assert format_size(-GIB // 2, 2, signed=True) == "-0.50 GiB"
    assert format_size(-5 * MIB, signed=True) == "-5.0 MiB"  # a small negative delta stays in MiB


@pytest.mark.parametrize("nbytes", SIZES)
def test_cli_merge_lines_use_the_formatter(capsys, nbytes):
    display = ProgressDisplay(io.StringIO())
    display.show(DownloadProgress("org/model", "model.safetensors", nbytes, nbytes))
    display.show(MergeDone(Path("out"), 3, nbytes, 1.0))
    assert f"downloaded org/model/model.safetensors ({format_size(nbytes)})" in display.status.stream.getvalue()
    assert f"merged 3 tensors ({format_size(nbytes)}) into out" in capsys.readouterr().out


@pytest.mark.parametrize("nbytes", SIZES)
def test_cli_estimate_rows_and_window_figures_agree(nbytes):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from merger_gui.qt import estimate_panel

    assert _row("weights", nbytes).split()[-2:] == estimate_panel._size(nbytes).split()


def test_window_panels_use_the_core_formatter():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from merger_gui.qt import donor_panel, estimate_panel, merge_panel

    assert donor_panel.format_size is merge_panel.format_size is estimate_panel.format_size is format_size
