"""PEFT LoRA adapters as mergekit's MODEL+LORA references use them: the adapter's config and scaling.

mergekit merges ``adapter_model.safetensors`` into its model with PEFT's ``merge_and_unload``
before merging: ``W' = W + scaling · B @ A`` for every targeted module, where ``scaling`` is
``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .donor import DonorInfo, TensorInfo
from .errors import DonorError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_ADAPTER_CONFIG_BYTES = 1 << 20
PEFT_PREFIX = "base_model.model."
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
MERGE_FIRST = "merge it with peft's merge_and_unload and use that folder"


@dataclass(frozen=True)
class LoraConfig:
    """The facts of an adapter's config that change the merged weights."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False

    @property
    def scaling(self) -> float:
        """PEFT's factor of ``B @ A``."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


@dataclass(frozen=True)
class AdapterFacts:
    """What the window shows of a donor's adapter: where it is and what its config says (``config``
    None while a Hub adapter is not downloaded yet, or when its config is unreadable)."""

    reference: str  # the adapter's folder or Hub repo id
    config: LoraConfig | None
    target_modules: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``"+ LoRA r=16"`` (``"+ LoRA"`` without a config)."""
        return f"+ LoRA r={self.config.r}" if self.config else "+ LoRA"

    def describe(self) -> list[str]:
        """Tooltip lines: the adapter, its rank, alpha, scaling and targets, and how it is applied."""
        lines = [f"LoRA adapter: {self.reference}"]
        if self.config is None:
            lines.append("rank and alpha known once it is downloaded (at the merge)")
        else:
            c = self.config
            lines.append(f"r={c.r}, lora_alpha={c.lora_alpha:g}, rsLoRA {'yes' if c.use_rslora else 'no'}"
                         f" → scaling {c.scaling:g}")
        if self.target_modules:
            lines.append(f"targets: {', '.join(self.target_modules)}")
        lines.append("Applied to the weights as they are read, like mergekit (the model's files are unchanged)")
        return lines


def adapter_facts(reference: str) -> AdapterFacts:
    """The facts of adapter ``reference`` (a folder, or a Hub repo id read from the local Hub cache)."""
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        folder = _cached_hub_adapter(reference) or folder
    try:
        config = read_lora_config(folder, f"adapter {reference}")
        raw = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (DonorError, OSError, ValueError):
        return AdapterFacts(reference, None)
    targets = raw.get("target_modules") or ()
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(str(t) for t in targets))
    return AdapterFacts(reference, config, targets)


def check_adapter_reference(adapter: str) -> None:
    """Refuse, before any download, what cannot be an adapter: a folder that is not a PEFT LoRA
    adapter (see :func:`read_lora_config`), or neither a folder nor an ``org/name`` Hub repo id.

    Raises:
        DonorError: one line saying why.
    """
    from .resolve import REPO_ID  # resolve imports this module

    folder = Path(adapter).expanduser()
    if folder.is_dir():
        read_lora_config(folder, f"LoRA adapter {adapter}")
    elif "+" in adapter or not REPO_ID.match(adapter):
        raise DonorError(f"LoRA adapter {adapter!r} not found (not a folder, not an org/name Hub repo id)")


def _cached_hub_adapter(reference: str) -> Path | None:
    """The cache folder holding Hub adapter ``reference``'s config, if downloaded before."""
    import huggingface_hub  # only for Hub adapters

    repo_id, _, revision = reference.partition("@")
    try:
        path = huggingface_hub.try_to_load_from_cache(repo_id, ADAPTER_CONFIG, revision=revision or None)
    except Exception:  # noqa: BLE001 — a malformed repo id is just not cached
        return None
    return Path(path).parent if isinstance(path, str) else None


def split_lora_reference(ref: str) -> tuple[str, str | None]:
    """``(model, adapter)`` of ``MODEL+LORA`` (``adapter`` None without ``+``), as mergekit splits it.

    Raises:
        DonorError: more than one ``+``, or an empty part.
    """
    parts = ref.split("+")
    if len(parts) == 1:
        return ref, None
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise DonorError(f"{ref!r} is not MODEL+LORA (one model, one adapter, joined by a single +)")
    return parts[0].strip(), parts[1].strip()


def read_lora_config(folder: Path, who: str) -> LoraConfig:
    """The LoRA config of the adapter in ``folder``; refuses what PEFT would merge differently.

    Raises:
        DonorError: no readable config, not a LoRA, or a variant we do not apply (DoRA, per-module
            ranks, bias training, weights that are not ``.safetensors``).
    """
    file = folder / ADAPTER_CONFIG
    if not file.is_file():
        raise DonorError(f"{who}: {folder} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter folder")
    try:
        if file.stat().st_size > MAX_ADAPTER_CONFIG_BYTES:
            raise DonorError(f"{who}: {file} is too large for an adapter config")
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DonorError(f"{who}: cannot read the adapter's {ADAPTER_CONFIG} in {folder} ({exc})") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise DonorError(f"{who}: {folder} is not a LoRA adapter (peft_type {config.get('peft_type')!r})")
    refused = [key for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if config.get(key)]
    if config.get("bias", "none") != "none":
        refused.append(f"bias: {config['bias']}")
    if refused:
        raise DonorError(f"{who}: the adapter uses {', '.join(refused)}, which merger_gui does not apply; "
                         f"{MERGE_FIRST}")
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)  # PEFT's defaults
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0 or isinstance(alpha, bool) \
            or not isinstance(alpha, (int, float)):
        raise DonorError(f"{who}: the adapter's r must be a positive integer and lora_alpha a number")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise DonorError(f"{who}: {folder} has no {ADAPTER_WEIGHTS} (older .bin adapters are not read)")
    return LoraConfig(r, float(alpha), bool(config.get("use_rslora", False)), bool(config.get("fan_in_fan_out", False)))


def adapter_deltas(header: Mapping[str, TensorInfo], config: LoraConfig, who: str) -> dict[str, tuple[int, ...]]:
    """The model tensor each LoRA pair of an adapter's weights changes, and the delta's shape.

    Raises:
        DonorError: a tensor that is not a LoRA factor (an embedding LoRA, a ``modules_to_save``
            copy), a factor without its partner, or ranks that disagree with each other or ``r``.
    """
    deltas: dict[str, tuple[int, ...]] = {}
    for key, info in header.items():
        if "lora_embedding_" in key:
            raise DonorError(f"{who}: the adapter has an embedding LoRA ({key}), which merger_gui does not apply; "
                             f"{MERGE_FIRST}")
        if not key.endswith((LORA_A, LORA_B)):
            raise DonorError(f"{who}: adapter tensor {key!r} is not a LoRA factor (lora_A / lora_B of a linear "
                             f"layer); {MERGE_FIRST}")
        if key.endswith(LORA_A):
            partner = header.get(key[: -len(LORA_A)] + LORA_B)
            if partner is None:
                raise DonorError(f"{who}: adapter tensor {key!r} has no lora_B partner")
            module = key.removeprefix(PEFT_PREFIX).removesuffix(LORA_A)
            deltas[module + ".weight"] = _delta_shape(module, info.shape, partner.shape, config, who)
        elif key[: -len(LORA_B)] + LORA_A not in header:
            raise DonorError(f"{who}: adapter tensor {key!r} has no lora_A partner")
    if not deltas:
        raise DonorError(f"{who}: the adapter has no LoRA factors")
    return deltas


def _delta_shape(module: str, a: tuple[int, ...], b: tuple[int, ...], config: LoraConfig, who: str
                 ) -> tuple[int, ...]:
    """Shape of ``B @ A`` (transposed with ``fan_in_fan_out``), once the ranks agree."""
    if len(a) != 2 or len(b) != 2:
        raise DonorError(f"{who}: the LoRA factors of {module} are not matrices ({a} and {b})")
    if a[0] != b[1] or a[0] != config.r:
        raise DonorError(f"{who}: the LoRA factors of {module} have ranks {a[0]} (A) and {b[1]} (B), "
                         f"the adapter's r is {config.r}: a damaged or mislabelled adapter")
    return (b[0], a[1])[::-1] if config.fan_in_fan_out else (b[0], a[1])


def check_adapter_fits(deltas: Mapping[str, tuple[int, ...]], model: DonorInfo, who: str) -> None:
    """Refuse an adapter whose deltas do not land on ``model``'s tensors with their shapes
    (skipped when the model's tensors are not known, e.g. a profile).

    Raises:
        DonorError: no delta names a tensor of the model (target modules of another architecture),
            some do not, or a delta's shape is not its tensor's (an adapter of another model size).
    """
    if not model.tensors:
        return
    missing = [name for name in deltas if model.tensor(name) is None]
    if len(missing) == len(deltas):
        raise DonorError(f"{who}: the adapter's target modules match no tensor of the model (it changes "
                         f"{missing[0]}, which the model does not have): an adapter for another architecture")
    if missing:
        raise DonorError(f"{who}: the adapter changes {len(missing)} tensors the model does not have "
                         f"(first: {missing[0]}): an adapter for another model")
    for name, shape in deltas.items():
        info = model.tensor(name)
        assert info is not None  # none missing
        if tuple(info.shape) != tuple(shape):
            raise DonorError(f"{who}: the adapter's delta of {name} is {tuple(shape)}, the model's tensor "
                             f"{tuple(info.shape)}: an adapter for another model size")


def check_adapter_folder(folder: Path, model: DonorInfo, who: str) -> LoraConfig:
    """The config of the adapter in ``folder``, once its header shows it fits ``model``.

    Raises:
        DonorError: see :func:`read_lora_config`, :func:`adapter_deltas` and :func:`check_adapter_fits`.
    """
    from .safetensors_header import read_safetensors_header

    config = read_lora_config(folder, who)
    try:
        header = read_safetensors_header(folder / ADAPTER_WEIGHTS)
    except DonorError as exc:
        raise DonorError(f"{who}: LoRA adapter: {exc}") from None
    check_adapter_fits(adapter_deltas(header, config, who), model, who)
    return config
