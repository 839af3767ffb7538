"""Fingerprints that decide whether an intermediate stage output can be reused.

A stage's fingerprint hashes its canonical recipe text, the merge seed and the
fingerprints of its inputs: for a donor folder the identity of its files (see
:func:`folder_fingerprint`); for an earlier stage that stage's own fingerprint. The
fingerprint is stored in the intermediate folder as its last file, together with the
identity of the folder's own files when written, so a folder without a matching one
(incomplete, stale, or edited since) is merged again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from merger_gui.core.output_folders import FINGERPRINT_FILE
from merger_gui.core.recipe import Recipe, Stage

FORMAT = "merger_gui-stage-1"


def _sha256(data: bytes = b"") -> Any:
    """A SHA-256 hasher (hashlib is imported here: single-stage merges never hash)."""
    import hashlib

    return hashlib.sha256(data)


def folder_fingerprint(path: str | Path) -> str:
    """Hash of the name, size, modification time, change time and inode of each file directly in ``path``.

    The change time (ctime) is what ``os.utime`` cannot set back, so a file edited in place
    with its modification time restored, or replaced by another, no longer matches. A folder
    copied, or moved to another file system, gets new inodes and change times and is merged
    again: the safe side, as a stale stage reused would give a wrong model.
    """
    folder = Path(path)
    digest = _sha256()
    for file in sorted(folder.iterdir()):
        if file.name != FINGERPRINT_FILE and file.is_file():
            stat = file.stat()
            digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\0"
                          f"{stat.st_ino}\n".encode())
    return digest.hexdigest()


def stage_fingerprint(stage: Stage, inputs: Mapping[str, str], seed: int | None) -> str:
    """Hash of ``stage``'s recipe text, ``seed`` and its inputs' fingerprints (by model name)."""
    from merger_gui.core.recipe_yaml import dump_recipe

    digest = _sha256(f"{FORMAT}\0{seed}\0".encode())
    digest.update(dump_recipe(Recipe((stage,))).encode())
    for model in sorted(inputs):
        digest.update(f"\0{model}\0{inputs[model]}".encode())
    return digest.hexdigest()


def stored_fingerprint(folder: str | Path) -> str | None:
    """The fingerprint an intermediate folder was completed with; None when the folder is
    incomplete, not ours, or its files changed since (see :func:`folder_fingerprint`)."""
    try:
        data = json.loads((Path(folder) / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("files") != folder_fingerprint(folder):
        return None
    value = data.get("fingerprint")
    return value if isinstance(value, str) else None


def store_fingerprint(folder: str | Path, fingerprint: str) -> None:
    """Mark ``folder``, complete, as the output of the stage with ``fingerprint``."""
    record = {"fingerprint": fingerprint, "files": folder_fingerprint(folder)}
    (Path(folder) / FINGERPRINT_FILE).write_text(json.dumps(record) + "\n")
