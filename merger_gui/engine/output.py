"""The output folder: written in a temporary sibling and renamed into place only when complete.

A partial folder is named ``.NAME.partial-<pid>-<random>`` and holds an owner file (pid,
host, process start time) until it is committed, so a later run can tell a folder whose
writer was killed (SIGKILL, a crash, a power cut) from one still being written, and
remove it (:func:`sweep_stale_partials`). Removing a partial folder holds SIGINT, SIGTERM
and SIGHUP until it is done (:func:`held_signals`), so a second Ctrl-C cannot cut it short.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from merger_gui.core.donor import DonorInfo
from merger_gui.core.dtypes import dtype_of
from merger_gui.core.errors import DonorError, UserError
from merger_gui.core.plan import StagePlan
from merger_gui.core.recipe import Recipe, Stage

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "generation_config.json", "chat_template.jinja", "chat_template.json",
)
RECIPE_FILE = "mergekit_config.yml"
PARTIAL_MARK = ".partial-"
OWNER_FILE = ".merger_gui-owner.json"  # inside a partial folder until it is committed
PARTIAL_NAME = re.compile(r"^\..+\.partial-([1-9][0-9]{0,9})-[0-9a-f]{8}$")
COPY_CHUNK = 1024 * 1024
HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def partial_folder(target: Path) -> Path:
    """Create a hidden sibling of ``target`` to write into, named and marked as this process's."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = target.parent / f".{target.name}{PARTIAL_MARK}{os.getpid()}-{os.urandom(4).hex()}"
    with held_signals():  # never a folder without its owner file
        folder.mkdir()
        (folder / OWNER_FILE).write_text(json.dumps(_owner(os.getpid())))
    return folder


def release_partial(folder: Path) -> None:
    """Remove the owner file of a complete partial folder, just before it is committed."""
    (folder / OWNER_FILE).unlink(missing_ok=True)


def sweep_stale_partials(folders: Iterable[Path]) -> list[Path]:
    """Remove the partial folders in ``folders`` whose writer process is gone; returns them.

    Only folders named by :func:`partial_folder` are considered; one whose process still
    runs, or that another host wrote (a shared file system), is left alone.
    """
    removed = []
    for folder in dict.fromkeys(folders):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            match = PARTIAL_NAME.match(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and _is_stale(path, int(match[1])) \
                    and remove_folder(path):
                removed.append(path)
    return removed


def check_folder_path(folder: Path, goal: Path) -> None:
    """Refuse to make ``goal`` in ``folder`` when a file or a dead link stands where ``folder``
    or a folder above it must be (created if missing).

    Raises:
        UserError: naming the file or link in the way.
    """
    for path in (folder, *folder.parents):
        if path.is_dir():
            return
        if path.exists() or path.is_symlink():
            what = "a link to nothing" if not path.exists() else "not a folder"
            raise UserError(f"cannot create {goal}: {path} is {what}; choose another folder")


def commit_folder(partial: Path, target: Path, overwrite: bool) -> None:
    """Move the complete ``partial`` folder to ``target``; an existing target is replaced only
    with ``overwrite`` and only now, after the new one is complete.

    Raises:
        UserError: ``target`` exists and ``overwrite`` is false.
    """
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise UserError(f"{target} already exists; choose another folder or replace it (--overwrite)")
        old = target.parent / f".{target.name}.old-{os.urandom(4).hex()}"
        target.rename(old)
        partial.rename(target)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
        return
    partial.rename(target)


def remove_folder(folder: Path) -> bool:
    """Remove a partial folder and everything in it, signals held until done; whether it is gone."""
    with held_signals():
        shutil.rmtree(folder, ignore_errors=True)
    return not (folder.exists() or folder.is_symlink())


@contextmanager
def held_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then deliver the first one that came.

    Only the main thread runs Python's signal handlers (a handler may raise, e.g.
    KeyboardInterrupt, anywhere in it), so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    # A handler installed outside Python (getsignal gives None) could not be put back: leave it.
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum))
                for s in HELD_SIGNALS if signal.getsignal(s) is not None}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])


def _owner(pid: int) -> dict[str, Any]:
    return {"pid": pid, "host": socket.gethostname(), "started": _start_time(pid)}


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), where /proc tells; a reused pid differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name in (…) may hold spaces
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _is_stale(folder: Path, pid: int) -> bool:
    """Whether the process that wrote ``folder`` (``pid`` from its name) is gone.

    The owner file also tells the host and the process' start time (a pid used again by
    another process is not the owner). Without it (killed before it was written), the pid alone decides.
    """
    owner = _read_owner(folder / OWNER_FILE)
    if owner is None:
        return not _alive(pid, None)
    if owner.get("host") != socket.gethostname() or owner.get("pid") != pid:
        return False
    return not _alive(pid, owner.get("started"))


def _read_owner(file: Path) -> dict[str, Any] | None:
    try:
        if file.is_symlink() or not file.is_file() or file.stat().st_size > 4096:
            return None
        owner = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive(pid: int, started: object) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    now = _start_time(pid)
    return started is None or now is None or now == started


def output_dtype_name(stage: Stage, config_donor: DonorInfo) -> str:
    """torch-style name (``bfloat16``) of the dtype the output's weights are stored in."""
    name = stage.out_dtype or stage.dtype or config_donor.dtype
    return dtype_of(name).torch_name


def output_config(plan: StagePlan, stage: Stage, config_donor: DonorInfo) -> dict[str, Any]:
    """The config donor's config.json with layer count, vocabulary size and dtype of the output."""
    config = dict(config_donor.config)
    dtype = output_dtype_name(stage, config_donor)
    # transformers < 5 reads torch_dtype, 5.x reads dtype: write both.
    config.update(num_hidden_layers=plan.num_layers, vocab_size=plan.vocab_size, torch_dtype=dtype, dtype=dtype)
    if any(t.name.endswith("lm_head.weight") for t in plan.tensors):
        config["tie_word_embeddings"] = False
    return config


def write_metadata(folder: Path, plan: StagePlan, stage: Stage, config_donor: DonorInfo,
                   copy_tokenizer: bool) -> None:
    """config.json, the tokenizer files (when ``copy_tokenizer``), the recipe and a model card.

    Raises:
        OSError: a file cannot be written; its ``filename`` is that file, also for a full disk.
        DonorError: a donor file cannot be read (see :func:`copy_files`).
    """
    write_file(folder / "config.json", json.dumps(output_config(plan, stage, config_donor), indent=2) + "\n")
    if copy_tokenizer and config_donor.path:
        copy_files(Path(config_donor.path), folder, TOKENIZER_FILES)
    from merger_gui.core.recipe_yaml import dump_recipe  # the YAML writer is only needed here

    recipe_text = dump_recipe(Recipe((stage,)))
    write_file(folder / RECIPE_FILE, recipe_text)
    write_file(folder / "README.md", model_card(plan, stage, recipe_text))


def copy_files(source: Path, target: Path, names: Iterable[str]) -> None:
    """Copy the files ``names`` that donor folder ``source`` has into ``target``.

    Raises:
        DonorError: a file cannot be read, is special or a link leading outside the donor (e.g. to /etc/passwd).
        OSError: a copy cannot be written; its ``filename`` is the copy, also for a full disk.
    """
    from merger_gui.core.safe_files import donor_file, is_present

    for name in names:
        file = source / name
        if is_present(file):
            _copy_file(donor_file(file, source), target / name, file)


def write_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path``; an error names ``path``, also one raised by a write (a full disk)."""
    try:
        path.write_text(text)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _copy_file(source: Path, target: Path, shown: Path) -> None:
    """Copy ``source`` (a donor file, named ``shown``) to ``target``, each error naming its own side."""
    try:
        reading = source.open("rb")
    except OSError as exc:
        raise DonorError(f"cannot read {shown}: {exc.strerror or exc}") from None
    with reading:
        try:
            with target.open("wb") as writing:
                while chunk := _read_chunk(reading, shown):
                    writing.write(chunk)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(target)) from None


def _read_chunk(handle: BinaryIO, shown: Path) -> bytes:
    try:
        return handle.read(COPY_CHUNK)
    except OSError as exc:
        raise DonorError(f"cannot read {shown}: {exc.strerror or exc}") from None


def model_card(plan: StagePlan, stage: Stage, recipe_text: str) -> str:
    """A short README: how the model was made and the recipe that made it."""
    models = "\n".join(f"- {m}" for m in stage.referenced_models)
    base = f" with `{stage.base_model}` as the base" if stage.base_model else ""
    return (
        "---\ntags:\n- merge\n- mergekit\n- merger_gui\n---\n"
        f"# {plan.name or 'merged model'}\n\n"
        f"This model was merged with merger_gui using the `{plan.merge_method}` method{base} "
        f"({plan.num_layers} layers).\n\n## Models\n\n{models}\n\n"
        f"## Recipe\n\n```yaml\n{recipe_text.rstrip()}\n```\n"
    )
