"""Which folders a merge may write or replace: the rules that keep a user's files safe.

A merge writes its final model and each intermediate stage into folders it may have to
replace (``--overwrite``, a stale intermediate stage). Replacing deletes, so a folder is
replaced only when it is empty or holds nothing but what a merge writes (config, weights,
tokenizer, model card, recipe), and never when it is or holds something the user still
needs: the recipe being merged, the current directory, the home folder or a donor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

FINGERPRINT_FILE = ".merger_gui-fingerprint.json"  # marks an intermediate stage folder as ours
MAX_FOLDER_NAME = 200  # bytes; most filesystems allow 255

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MODEL_FOLDER_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json",
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
    "README.md", "mergekit_config.yml", ".gitattributes", "LICENSE", "LICENSE.txt", "LICENSE.md",
    FINGERPRINT_FILE,
})  # fmt: skip
RECIPE_SUFFIXES = (".yml", ".yaml")


def stage_folder_name(label: str) -> str:
    """The folder an intermediate stage is written to inside the intermediate directory."""
    return re.sub(r"[^\w.-]+", "_", label)


def stage_name_problem(name: str) -> str | None:
    """Why stage ``name`` cannot name a folder (None when it can)."""
    folder = stage_folder_name(name)
    if folder in ("", ".", ".."):
        return f"stage name {name!r} gives the folder name {folder!r}; use letters, digits, '-', '_' or '.'"
    if len(os.fsencode(folder)) > MAX_FOLDER_NAME:
        return f"stage name {name[:40]!r}… is too long for a folder name (at most {MAX_FOLDER_NAME} bytes)"
    return None


def folder_key(name: str) -> str:
    """What makes two folder names the same folder, on case-insensitive filesystems too."""
    return stage_folder_name(name).casefold()


def overlaps(a: Path, b: Path) -> bool:
    """Whether one of two resolved paths is the other or inside it."""
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def protected_reason(folder: Path, recipe_path: str | Path | None = None,
                     donor_folders: Iterable[tuple[str, Path]] = ()) -> str | None:
    """Why ``folder`` must never be replaced (None when nothing forbids it).

    It may not be or hold the recipe being merged, the current directory or the home
    folder, and may not overlap a donor's folder.
    """
    path = folder.absolute().resolve()
    if recipe_path is not None and Path(recipe_path).absolute().resolve().is_relative_to(path):
        return "holds the recipe being merged"
    if Path.cwd().resolve().is_relative_to(path):
        return "is (or holds) the current directory"
    if Path.home().resolve().is_relative_to(path):
        return "is (or holds) your home folder"
    for model, donor in donor_folders:
        donor = donor.absolute().resolve()
        if path == donor:
            return f"is the folder of donor {model}"
        if donor.is_relative_to(path):
            return f"holds donor {model} ({donor})"
        if path.is_relative_to(donor):
            return f"is inside the folder of donor {model}"
    return None


def foreign_content(folder: Path) -> str | None:
    """What ``folder`` holds that a merge output does not (None when empty or a model folder)."""
    if folder.is_symlink():
        return None  # replacing a link removes the link only
    if not folder.is_dir():
        return "is a file, not a folder"
    entries = sorted(folder.iterdir())
    if not entries:
        return None
    names = {entry.name for entry in entries}
    for entry in entries:
        if entry.is_symlink() or not entry.is_file():
            return f"holds {entry.name}{'/' if entry.is_dir() else ''}, which a merged model does not"
        if not _model_file(entry.name):
            return f"holds {entry.name}, which a merged model does not"
    if "config.json" not in names or not any(n.endswith(WEIGHT_SUFFIXES) for n in names):
        return "is not a model folder (no config.json with weights)"
    return None


def _model_file(name: str) -> bool:
    return name in MODEL_FOLDER_FILES or name.endswith(WEIGHT_SUFFIXES + RECIPE_SUFFIXES)


def replace_refusal(folder: Path, recipe_path: str | Path | None = None,
                    donor_folders: Iterable[tuple[str, Path]] = ()) -> str | None:
    """One line saying why an existing ``folder`` may not be replaced by a merge, else None."""
    reason = protected_reason(folder, recipe_path, donor_folders) if not folder.is_symlink() else None
    reason = reason or foreign_content(folder)
    if reason is None:
        return None
    return f"{folder} is not replaced: it {reason}; choose another folder (or empty it yourself)"
