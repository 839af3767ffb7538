"""SIGTERM, SIGHUP and Ctrl-C close the window at once; a running merge leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("pytestqt")

from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.recipe_yaml import dump_recipe
from merger_gui.core.synthetic import DonorShape
from merger_gui.qt.termination import TerminationSignals

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_arrives_as_a_qt_signal_while_the_loop_idles(qtbot, number):
    terminations = TerminationSignals()
    try:
        with qtbot.waitSignal(terminations.received, timeout=3000) as received:
            os.kill(os.getpid(), number)
        assert received.args == [number]
    finally:
        terminations.restore()
    assert signal.getsignal(number) is not terminations._handle


def test_sigterm_mid_merge_quits_and_removes_the_partial_folder(make_donor, tmp_path):
    shape = DonorShape(num_layers=8, hidden_size=512, intermediate_size=2048, num_heads=8, num_kv_heads=8,
                       vocab_size=4096)
    donors = {name: make_donor(name, shape, seed=seed) for name, seed in (("a", 1), ("b", 2))}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(dump_recipe(Recipe((Stage(
        "slerp", slices=(Slice((SliceSource("a", (0, 8)), SliceSource("b", (0, 8)))),), base_model="a",
        parameters={"t": 0.5}),))))
    script = f"""
import sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
from merger_gui.qt import app as app_module
from merger_gui.qt.main_window import MainWindow

def start_merge_when_ready(window):
    panel = window.merge_panel
    if panel.blockers():
        QTimer.singleShot(100, lambda: start_merge_when_ready(window))
        return
    panel.folder_edit.setText({str(tmp_path / "out")!r})
    panel.runner.progress.connect(lambda event: print("PROGRESS", flush=True))
    panel.start_merge()

original_show = MainWindow.show
def show(self):
    original_show(self)
    QTimer.singleShot(0, lambda: start_merge_when_ready(self))
MainWindow.show = show
sys.exit(app_module.main([{str(recipe)!r}, "--donor", "a={donors['a']}", "--donor", "b={donors['b']}"]))
"""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=tmp_path)
    assert process.stdout.readline().strip() == "PROGRESS", process.stderr.read()
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert "Traceback" not in err
    assert process.returncode == 0
    time.sleep(0.1)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
