"""PEFT LoRA adapters as mergekit's MODEL+LORA references use them: the adapter's config and scaling.

mergekit merges ``adapter_model.safetensors`` into its model with PEFT's ``merge_and_unload``
before merging: ``W' = W + scaling · B @ A`` for every targeted module, where ``scaling`` is
``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import DonorError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_ADAPTER_CONFIG_BYTES = 1 << 20


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
        raise DonorError(f"{who}: the adapter uses {', '.join(refused)}, which merger_gui does not apply; merge it "
                         "with peft's merge_and_unload and use that folder")
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)  # PEFT's defaults
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0 or isinstance(alpha, bool) \
            or not isinstance(alpha, (int, float)):
        raise DonorError(f"{who}: the adapter's r must be a positive integer and lora_alpha a number")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise DonorError(f"{who}: {folder} has no {ADAPTER_WEIGHTS} (older .bin adapters are not read)")
    return LoraConfig(r, float(alpha), bool(config.get("use_rslora", False)), bool(config.get("fan_in_fan_out", False)))
