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
