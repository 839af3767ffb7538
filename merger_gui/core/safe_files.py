"""Read and open donor files defensively: regular files only, bounded in size, links kept home.

Donor folders come from downloads and other people's disks. A file named like
``config.json`` may be a FIFO (an open blocks forever), a link to ``/dev/zero`` (a read
never ends) or a link to ``/etc/passwd`` (which a merge would copy into a model that gets
uploaded). Every donor file is therefore reached through :func:`donor_file`: it must be a
regular file, and a symlink is followed only when it resolves inside the donor folder or
inside a Hugging Face cache's ``blobs`` (``snapshots/<rev>/file -> ../../blobs/<hash>``, and
``--local-dir`` downloads that link into the cache). Weight files may link anywhere (weights
kept on another disk): only tensor data their header describes is ever read from them, never
copied whole.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any, TypeAlias

from .errors import DonorError

# What open_donor_file returns: unbuffered (buffering=0) or buffered; both read into a buffer.
DonorHandle: TypeAlias = io.FileIO | io.BufferedReader

MIB = 1024 * 1024
CONFIG_LIMIT = 4 * MIB  # config.json, generation_config.json: a few kB in practice
INDEX_LIMIT = 64 * MIB  # *.index.json: ~10 MB for the largest sharded models
TOKENIZER_LIMIT = 64 * MIB  # tokenizer.json: 33 MB for Gemma 3's 262k vocabulary
MAX_JSON_DEPTH = 100  # real files nest < 10 deep; deeper breaks recursive code (json.dumps)
MAX_INT_DIGITS = 100
# Counted in the raw bytes before parsing (brackets and commas in strings count too): a real
# tokenizer.json holds ~1M lists and ~2M items; 64 MB of `[],` would parse into 3 GB.
MAX_JSON_CONTAINERS = 2_000_000
MAX_JSON_ITEMS = 8_000_000
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CONTAINERS = frozenset((dict, list))

_KINDS = (
    (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)  # fmt: skip


def donor_file(path: str | Path, root: str | Path | None = None) -> Path:
    """``path`` with its links resolved, when it is a regular file that stays inside ``root``.

    Args:
        path: The file as the donor names it.
        root: The donor folder (default: the file's own folder).

    Raises:
        DonorError: missing, a link leading outside the donor, or not a regular file.
    """
    path = Path(path)
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise DonorError(f"{path} is missing" + (" (a broken link)" if path.is_symlink() else "")) from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise DonorError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    roots = allowed_roots(Path(root) if root is not None else path.parent)
    if not (path.name.endswith(WEIGHT_SUFFIXES) or in_hub_blobs(real) or any(real.is_relative_to(r) for r in roots)):
        raise DonorError(f"{path} is a link to {real}, outside the donor folder; "
                         "copy the file into the folder instead of linking it")
    try:
        _check_regular(os.stat(real), path)
    except OSError as exc:
        raise DonorError(f"cannot read {path}: {exc.strerror or exc}") from None
    return real


def allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where a donor folder's links may lead: the folder, and its Hub cache repo's ``blobs``."""
    real = folder.resolve()
    for ancestor in (real, *real.parents):
        snapshots = ancestor.parent
        if snapshots.name == "snapshots" and snapshots.parent.name.startswith("models--"):
            return real, snapshots.parent / "blobs"
    return (real,)


def in_hub_blobs(real: Path) -> bool:
    """Whether ``real`` is a file in a Hugging Face cache repo's ``blobs`` (``models--org--name/blobs``)."""
    return real.parent.name == "blobs" and real.parent.parent.name.startswith(("models--", "datasets--"))


def is_present(path: str | Path) -> bool:
    """Whether a donor names ``path`` at all: a file, a special file or a link, even a broken one.

    Use it instead of ``Path.is_file`` for optional files, so that an unusable one is reported
    by :func:`donor_file` rather than silently skipped or followed.
    """
    return os.path.lexists(path)


def open_donor_file(path: str | Path, root: str | Path | None = None, buffering: int = -1) -> DonorHandle:
    """Open a donor file for binary reading, checked like :func:`donor_file` (never blocks on a FIFO)."""
    real = donor_file(path, root)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DonorError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        _check_regular(os.fstat(fd), Path(path))  # it may have been swapped since donor_file looked
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb", buffering=buffering)
        assert isinstance(handle, (io.FileIO, io.BufferedReader))  # binary reading, raw or buffered
        return handle
    except BaseException:
        os.close(fd)
        raise


def read_small_file(path: str | Path, limit: int, what: str, root: str | Path | None = None) -> bytes:
    """The bytes of a donor file of at most ``limit`` bytes.

    Raises:
        DonorError: see :func:`donor_file`; also when the file is larger than ``limit``.
    """
    with open_donor_file(path, root) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise DonorError(f"{path} is {size:,} bytes, more than the {limit:,} a {what} may have")
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise DonorError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:  # it grew while we read
        raise DonorError(f"{path} is more than the {limit:,} bytes a {what} may have")
    return data


def read_json_file(path: str | Path, limit: int, what: str, root: str | Path | None = None, *,
                   small_ints: bool = True) -> Any:
    """A donor's JSON file, parsed; see :func:`read_small_file` and :func:`parse_json`."""
    return parse_json(read_small_file(path, limit, what, root), str(path), small_ints=small_ints)


def parse_json(raw: bytes, source: str, *, small_ints: bool = True) -> Any:
    """JSON from an untrusted source; DonorError (naming ``source``) for anything unusable.

    Nesting is limited to :data:`MAX_JSON_DEPTH` levels, size to :data:`MAX_JSON_CONTAINERS`
    and :data:`MAX_JSON_ITEMS`. With ``small_ints`` (sizes: configs,
    indexes, headers) integers are limited to :data:`MAX_INT_DIGITS` digits; without (a
    tokenizer's millions of ids, read at C speed) to Python's 4300.
    """
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_CONTAINERS or raw.count(b",") > MAX_JSON_ITEMS:
        raise DonorError(f"{source} holds more than {MAX_JSON_CONTAINERS:,} lists and objects or "
                         f"{MAX_JSON_ITEMS:,} items, far more than a real one")
    try:
        data = json.loads(raw.decode("utf-8"), parse_int=_bounded_int if small_ints else None)
    except UnicodeDecodeError as exc:
        raise DonorError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise DonorError(f"{source} is not usable JSON: it nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long
        problem = "an integer of more than 4300 digits" if "integer string conversion" in str(exc) else exc
        raise DonorError(f"{source} is not valid JSON: {problem}") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise DonorError(f"{source} is not usable JSON: it nests deeper than {MAX_JSON_DEPTH} levels")
    return data


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        if not _CONTAINERS.isdisjoint(map(type, children)):  # a C-speed pass skips flat lists and maps
            stack.extend((child, depth + 1) for child in children if type(child) in _CONTAINERS)
    return deepest


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer with {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _check_regular(info: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        raise DonorError(f"{path} is {kind}, not a regular file")
