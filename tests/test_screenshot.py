"""``merger-gui --screenshot`` renders the window offscreen to a PNG of the requested size."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from PySide6.QtGui import QImage


def screenshot(tmp_path, *args: str) -> QImage:
    out = tmp_path / "shot.png"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("QT_QPA_PLATFORM", None)  # the command itself must choose offscreen rendering
    result = subprocess.run([sys.executable, "-m", "merger_gui", "--screenshot", str(out), *args],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    image = QImage(str(out))
    assert not image.isNull()
    return image


def distinct_colours(image: QImage, step: int = 9) -> int:
    return len({image.pixel(x, y) for x in range(0, image.width(), step) for y in range(0, image.height(), step)})


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_screenshot_of_the_rose_recipe(tmp_path, seed_recipe_path, theme):
    image = screenshot(tmp_path, str(seed_recipe_path("rose-20b.yaml")),
                       "--donor", "Thorns-13B=profile:llama-2-13b", "--donor", "Noromaid-13B=profile:llama-2-13b",
                       "--size", "1024x700", "--theme", theme)
    assert (image.width(), image.height()) == (1024, 700)
    assert distinct_colours(image) > 30  # a drawn window, not a blank canvas
    window_colour = image.pixelColor(5, image.height() // 2)
    assert (window_colour.lightness() < 100) == (theme == "dark")


def test_screenshot_waits_for_inspection_and_debounced_panels(qtbot, tmp_path, seed_recipe_path):
    """The estimate and the curves are debounced behind donor inspection: the shot waits for them."""
    from PySide6.QtCore import QSettings

    from merger_gui.qt.app import TOOL_TABS, save_screenshot
    from merger_gui.qt.main_window import MainWindow
    from merger_gui.qt.settings import Settings

    window = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    qtbot.addWidget(window)
    overrides = {"Thorns-13B": "profile:llama-2-13b", "Noromaid-13B": "profile:llama-2-13b"}
    assert window.files.open_path(seed_recipe_path("rose-20b.yaml"), overrides, ask=False)
    window.tools.setCurrentIndex(TOOL_TABS.index("estimate"))
    assert window.estimate_panel.figure("total") == "—"  # nothing inspected or estimated yet
    assert save_screenshot(window, tmp_path / "shot.png", (1280, 800))
    assert window.estimate_panel.figure("total").endswith("GiB")
    assert window.estimate_panel.figure("layers") == "62"
    assert len(window.estimate_panel.memory_curve.yData) > 10
    assert not window.inspector.is_busy and not window.live_plan.is_pending
    assert QImage(str(tmp_path / "shot.png")).width() == 1280


@pytest.mark.parametrize("content", [None, "slices: [oops"])
def test_screenshot_of_an_unreadable_recipe_fails_at_once(tmp_path, content):
    """No modal warning offscreen (it would wait forever): one line on stderr and exit 1."""
    recipe = tmp_path / "recipe.yaml"
    if content is not None:
        recipe.write_text(content)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "merger_gui", "--screenshot", str(tmp_path / "shot.png"),
                             str(recipe)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "recipe.yaml" in result.stderr and "error" in result.stderr
    assert not (tmp_path / "shot.png").exists()


def test_every_tool_tab_can_be_asked_for_by_name(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from merger_gui.qt.app import TOOL_TABS
    from merger_gui.qt.main_window import MainWindow
    from merger_gui.qt.settings import Settings

    window = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    qtbot.addWidget(window)
    assert tuple(window.tools.tabText(i).lower() for i in range(window.tools.count())) == TOOL_TABS


def test_launch_sh_skips_the_x11_check_for_every_cli_command():
    from pathlib import Path

    from merger_gui.cli import COMMANDS

    launch = (Path(__file__).parents[1] / "packaging" / "launch.sh").read_text()
    skipped = next(line for line in launch.splitlines() if line.startswith("case ${1:-} in validate"))
    assert set(COMMANDS) <= set(skipped.split(" in ", 1)[1].split(")")[0].split("|"))
