"""Signals and hazards mid-merge: nothing left behind, messages that are true.

Each test runs ``python -m merger_gui merge`` as a subprocess on two donors of ~40 MB (a
SLERP takes a second or two, a passthrough a fraction), waits for its partial folder to
appear, signals it (stopped with SIGSTOP meanwhile, so that the signal lands while the
folder exists even in a fast copy), and checks the exit status, the message and that no
partial folder survives the signalled run or, after SIGKILL, the next one.
"""

from __future__ import annotations

import errno
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from merger_gui.cli.common import donors_for, load_recipe_file
from merger_gui.core.synthetic import DonorShape, write_donor
from merger_gui.engine.events import MergeDone, MergeWarning, TensorProgress
from merger_gui.engine.output import PARTIAL_MARK, sweep_stale_partials
from merger_gui.engine.run import run_merge

pytestmark = pytest.mark.timeout(60)

SHAPE = DonorShape(num_layers=2, hidden_size=512, intermediate_size=1024, num_heads=8, num_kv_heads=4,
                   vocab_size=16000)
TENSORS = 2 + 9 * 2 + 1  # embeddings, lm_head, norm and nine per layer
SLERP = """
slices:
  - sources:
      - {model: a, layer_range: [0, 2]}
      - {model: b, layer_range: [0, 2]}
merge_method: slerp
base_model: a
parameters:
  t: 0.5
dtype: float16
"""
PASSTHROUGH = """
slices:
  - sources: [{model: a, layer_range: [0, 2]}]
  - sources: [{model: b, layer_range: [0, 2]}]
merge_method: passthrough
base_model: a
dtype: float16
"""
TWO_STAGES = """
name: first
slices:
  - sources: [{model: a, layer_range: [0, 2]}]
  - sources: [{model: b, layer_range: [0, 2]}]
merge_method: passthrough
base_model: a
dtype: float16
---
slices:
  - sources:
      - {model: first, layer_range: [0, 2]}
      - {model: a, layer_range: [0, 2]}
merge_method: slerp
base_model: a
parameters:
  t: 0.5
dtype: float16
"""
RECIPES = {"slerp": SLERP, "passthrough": PASSTHROUGH}


@pytest.fixture(scope="module")
def donor_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("donors")
    return {"a": write_donor(root / "a", SHAPE, seed=1), "b": write_donor(root / "b", SHAPE, seed=2)}


@pytest.fixture
def work(tmp_path, donor_folders) -> Path:
    """A folder with the donors (b copied: a test may truncate it) and the recipes."""
    os.symlink(donor_folders["a"], tmp_path / "a")
    shutil.copytree(donor_folders["b"], tmp_path / "b")
    for name, text in {**RECIPES, "two_stages": TWO_STAGES}.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def start(work: Path, recipe: str, **popen) -> subprocess.Popen:
    argv = [sys.executable, "-m", "merger_gui", "merge", f"{recipe}.yaml", "out",
            f"--donor=a={work / 'a'}", f"--donor=b={work / 'b'}"]
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(argv, cwd=work, stdout=subprocess.DEVNULL, text=True, **popen)


def partials(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if PARTIAL_MARK in n) if folder.is_dir() else []


def stop_while_writing(process: subprocess.Popen, folder: Path) -> None:
    """Wait for the merge's partial folder in ``folder``, then stop the process (SIGSTOP)."""
    deadline = time.monotonic() + 30
    while not partials(folder):
        assert process.poll() is None, f"the merge ended first: {process.communicate()[1]}"
        assert time.monotonic() < deadline, "no partial folder appeared"
        time.sleep(0.0005)
    process.send_signal(signal.SIGSTOP)
    assert partials(folder), "the merge finished before it could be stopped"


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=30)
    return process.returncode, err


def next_run(work: Path, out: str = "out") -> list[object]:
    """The next merge beside the last one, in this process."""
    recipe = load_recipe_file(work / "slerp.yaml")
    donors, _ = donors_for(recipe, work / "slerp.yaml", [f"a={work / 'a'}", f"b={work / 'b'}"])
    return list(run_merge(recipe, donors, work / out))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize(("signum", "code", "how"), [
    (signal.SIGINT, 130, "cancelled"), (signal.SIGTERM, 143, "cancelled by SIGTERM"),
    (signal.SIGHUP, 129, "cancelled by SIGHUP"),
])
def test_a_signal_mid_merge_cancels_and_leaves_nothing(work, recipe, signum, code, how):
    process = start(work, recipe)
    stop_while_writing(process, work)
    process.send_signal(signum)
    process.send_signal(signal.SIGCONT)
    returncode, err = finish(process)
    assert returncode == code
    assert err.strip().splitlines()[-1] == f"{how}: nothing was written"
    assert "Traceback" not in err
    assert partials(work) == [] and not (work / "out").exists()


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_ctrl_c_pressed_again_and_again_cannot_cut_the_clean_up_short(work, recipe):
    process = start(work, recipe)
    stop_while_writing(process, work)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGCONT)
    while process.poll() is None:  # a SIGINT every 0.2 ms until it has ended
        process.send_signal(signal.SIGINT)
        time.sleep(0.0002)
    returncode, err = finish(process)
    assert returncode == 130, err
    assert err.strip().splitlines()[-1] == "cancelled: nothing was written"
    assert "Traceback" not in err
    assert partials(work) == [] and not (work / "out").exists()


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_the_next_run_removes_what_a_killed_merge_left(work, recipe):
    process = start(work, recipe)
    stop_while_writing(process, work)
    process.send_signal(signal.SIGKILL)
    assert finish(process)[0] == -signal.SIGKILL
    left = partials(work)
    assert len(left) == 1 and f"{PARTIAL_MARK}{process.pid}-" in left[0]
    events = next_run(work)
    assert any(isinstance(e, MergeWarning) and left[0] in e.message and "process is gone" in e.message
               for e in events)
    assert isinstance(events[-1], MergeDone)
    assert partials(work) == []


def test_a_killed_stage_is_swept_from_the_intermediate_folder(work):
    process = start(work, "two_stages")
    stop_while_writing(process, work / "out.intermediate")
    process.send_signal(signal.SIGKILL)
    finish(process)
    left = partials(work / "out.intermediate")
    assert len(left) == 1
    assert [p.name for p in sweep_stale_partials([work / "out.intermediate"])] == left
    assert partials(work / "out.intermediate") == []


def test_a_live_merge_s_partial_folder_is_left_alone(work):
    process = start(work, "slerp")
    try:
        stop_while_writing(process, work)
        assert sweep_stale_partials([work]) == []
        assert len(partials(work)) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        finish(process)
    assert partials(work) == []


def test_cancelling_the_last_stage_keeps_the_finished_ones_and_says_so(work):
    process = start(work, "two_stages")
    stop_while_writing(process, work)  # the final output's partial: stage 1 is done
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    returncode, err = finish(process)
    assert returncode == 143
    stage = work / "out.intermediate" / "first"
    assert err.strip().splitlines()[-1] == (f"cancelled by SIGTERM: {work / 'out'} was not written; "
                                            f"the finished stage ({stage}) is kept for the next run")
    assert (stage / "config.json").is_file() and not (work / "out").exists()
    assert partials(work) == partials(work / "out.intermediate") == []


def test_a_donor_truncated_during_a_math_merge_is_a_one_line_error(work):
    """While a large tensor of b is read and merged (a memory map of it would raise SIGBUS)."""
    main, terminal = pty.openpty()  # a terminal: the progress bar counts the tensors
    process = start(work, "slerp", stderr=terminal)
    os.close(terminal)
    shown = b""
    while b"%d/%d tensors" % (TENSORS - 2, TENSORS) not in shown:  # lm_head and norm are left
        chunk = os.read(main, 4096)
        assert chunk, shown.decode(errors="replace")
        shown += chunk
    time.sleep(0.02)
    os.truncate(work / "b" / "model.safetensors", 1000)
    returncode = process.wait(timeout=30)
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    last = shown.decode(errors="replace").replace("\r", "\n").strip().splitlines()[-1]
    assert returncode == 1, last
    assert re.fullmatch(rf"error: '(lm_head|model\.norm)\.weight' of donor b: {re.escape(str(work / 'b'))}"
                        r"/model\.safetensors ends early \(truncated file\)", last)
    assert partials(work) == [] and not (work / "out").exists()


def test_a_merge_cancelled_from_the_window_leaves_nothing(work, qtbot):
    """What closing the window mid-merge does: MergeRunner.shutdown cancels and waits."""
    from merger_gui.qt.merge_runner import MergeRunner

    recipe = load_recipe_file(work / "slerp.yaml")
    donors, _ = donors_for(recipe, work / "slerp.yaml", [f"a={work / 'a'}", f"b={work / 'b'}"])
    runner = MergeRunner()
    with qtbot.waitSignal(runner.progress, timeout=30_000,
                          check_params_cb=lambda event: isinstance(event, TensorProgress)):
        runner.start_merge(recipe, donors, work / "out")
    with qtbot.waitSignal(runner.cancelled, timeout=30_000):
        runner.shutdown()
    assert not runner.is_running
    assert partials(work) == [] and not (work / "out").exists()


def test_an_unreadable_donor_tokenizer_is_named_as_read(work, monkeypatch):
    real_open = Path.open

    def refuse(path, mode="r", *args, **kwargs):
        if path.name == "tokenizer.json" and "r" in mode and path.parent.name == "a":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(Exception, match=r"^cannot read .*/a/tokenizer\.json: Permission denied$"):
        next_run(work)
    assert partials(work) == [] and not (work / "out").exists()


def test_a_full_disk_while_copying_the_tokenizer_names_the_copy(work, monkeypatch):
    real_open = Path.open

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, _data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def full(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if path.name == "tokenizer.json" and "w" in mode else handle

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(Exception, match=rf"^disk full while writing {re.escape(str(work / 'out'))}/tokenizer\.json: "):
        next_run(work)
    assert partials(work) == [] and not (work / "out").exists()
