"""Turn donor references (``profile:NAME``, a folder, a Hub repo id) into :class:`DonorInfo`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from .donor import DonorInfo
from .errors import DonorError, UserError
from .inspect import inspect_folder
from .lora_config import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_folder, split_lora_reference
from .profiles import PROFILE_PREFIX, load_profile
from .recipe import Recipe

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?:@[\w./-]+)?$")


def parse_donor_overrides(items: Sequence[str]) -> dict[str, str]:
    """Parse ``NAME=REF`` items (``--donor`` options) into ``{NAME: REF}``; later items win.

    Raises:
        UserError: an item is not of the form ``NAME=REF``.
    """
    return dict(parse_donor_override(item) for item in items)


def parse_donor_override(item: str) -> tuple[str, str]:
    """``(NAME, REF)`` of one ``NAME=REF`` item.

    Raises:
        UserError: ``item`` is not of the form ``NAME=REF``.
    """
    name, sep, ref = item.partition("=")
    if not sep or not name.strip() or not ref.strip():
        raise UserError(f"bad donor override {item!r}: expected NAME=REF (a folder, repo id or profile:NAME)")
    return name.strip(), ref.strip()


def resolve_donor(ref: str, *, name: str | None = None) -> DonorInfo:
    """Inspect a donor reference: ``profile:NAME``, an existing folder, or ``org/name[@revision]``.

    ``name`` is the recipe's model name; error messages name it when it differs from ``ref``.

    Raises:
        DonorError: unknown profile, missing or unreadable folder, unknown / unreachable repo.
    """
    renamed = name is not None and name != ref
    who = f"donor {name!r} ({ref})" if renamed else f"donor {ref!r}"
    path = Path(ref).expanduser()
    if not ref.startswith(PROFILE_PREFIX) and not path.exists():
        if "+" in ref:
            return _resolve_with_adapter(ref, name, who)
        if _looks_like_path(ref):
            raise DonorError(f"{who} not found (no such folder)")
        if not REPO_ID.match(ref):
            raise DonorError(f"{who} not found (not a folder, not an org/name Hub repo id)")
    try:
        if ref.startswith(PROFILE_PREFIX):
            return load_profile(ref.removeprefix(PROFILE_PREFIX))
        if path.exists():
            return inspect_folder(path if ref.startswith("~") else ref)
        from .hub import inspect_repo  # imports huggingface_hub, only needed for Hub donors

        repo_id, _, revision = ref.partition("@")
        return inspect_repo(repo_id, revision or None)
    except DonorError as exc:
        if renamed:  # the message names the folder, repo or profile, not the recipe's model
            raise DonorError(f"donor {name!r}: {exc}") from None
        raise


def _resolve_with_adapter(ref: str, name: str | None, who: str) -> DonorInfo:
    """``MODEL+LORA``: the model's facts (a LoRA changes no shape) with the adapter to apply, and
    the adapter's weights counted in the download when it comes from the Hub."""
    model_ref, adapter = split_lora_reference(ref)
    assert adapter is not None
    donor = resolve_donor(model_ref, name=name)
    folder = Path(adapter).expanduser()
    if folder.is_dir():
        check_adapter_folder(folder, donor, who)
        return replace(donor, adapter=str(folder.absolute()))
    if _looks_like_path(adapter) or not REPO_ID.match(adapter):
        raise DonorError(f"{who}: LoRA adapter {adapter!r} not found (not a folder, not an org/name Hub repo id)")
    return replace(donor, adapter=adapter, download_bytes=donor.download_bytes + _hub_adapter_bytes(adapter, who))


def _hub_adapter_bytes(adapter: str, who: str) -> int:
    """Bytes of a Hub adapter's files still to download (0 when in the Hub cache), looked up as
    Hub donors' files are (the repo's file list with sizes)."""
    import huggingface_hub  # only needed for Hub adapters

    repo_id, _, revision = adapter.partition("@")
    names = [n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
             if not isinstance(huggingface_hub.try_to_load_from_cache(repo_id, n, revision=revision or None), str)]
    if not names:
        return 0
    try:
        siblings = huggingface_hub.HfApi().model_info(repo_id, revision=revision or None,
                                                      files_metadata=True).siblings or []
    except Exception as exc:  # noqa: BLE001 — network and Hub errors come in many types
        raise DonorError(f"{who}: cannot look up LoRA adapter {adapter} on the Hub: "
                         f"{' '.join(str(exc).split())[:200]}") from None
    sizes = {s.rfilename: int(s.size or 0) for s in siblings}
    for name in names:
        if name not in sizes:
            raise DonorError(f"{who}: Hub repo {repo_id} has no {name}, so it is not a PEFT LoRA adapter")
    return sum(sizes[n] for n in names)


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", ref)) \
        or ref.count("/") > 1 and "@" not in ref


def resolve_recipe_donors(
    recipe: Recipe, overrides: Mapping[str, str], *, base_dir: Path | None = None
) -> tuple[dict[str, DonorInfo], dict[str, str]]:
    """Resolve every model a recipe references that is not one of its own stages.

    A name without an override is its own reference; relative folder names are looked up
    against ``base_dir`` (the recipe's folder) first.

    Returns:
        (donors by model name, one-line error messages by model name).
    """
    stage_names = set(recipe.stage_names())
    names = dict.fromkeys(m for stage in recipe.stages for m in stage.referenced_models if m not in stage_names)
    donors: dict[str, DonorInfo] = {}
    errors: dict[str, str] = {}
    for name in names:
        ref = overrides.get(name, name)
        if name not in overrides and base_dir is not None and not ref.startswith(PROFILE_PREFIX):
            ref = "+".join(_local_to(base_dir, part) for part in ([ref] if Path(ref).exists() else ref.split("+")))
        try:
            donors[name] = resolve_donor(ref, name=name)
        except DonorError as exc:
            errors[name] = str(exc)
    return donors, errors


def _local_to(base_dir: Path, ref: str) -> str:
    """``ref`` as a folder next to the recipe when it is a relative path to one there."""
    local = Path(base_dir) / Path(ref).expanduser()
    return str(local) if not Path(ref).expanduser().is_absolute() and local.is_dir() else ref
