"""MODEL+LORA donors: a PEFT LoRA adapter applied to its model's tensors as they are read.

mergekit merges the adapter into the model with PEFT's ``merge_and_unload`` before merging
(``W' = W + scaling · B @ A`` for each targeted module). PEFT keeps the adapter in float32
on the CPU (it upcasts half-precision adapters) and adds the float32 delta to the weight in
place, so the sum is taken in float32 and rounded once to the weight's dtype; doing the same
here gives mergekit's bits. The adapter is small (``r`` rows per module) and read whole once;
each targeted tensor is adapted on the fly, so no merged copy of the model is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import DonorError
from merger_gui.core.lora_config import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraConfig, read_lora_config

if TYPE_CHECKING:
    import torch

_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class LoraAdapter:
    """An adapter's factors by the model tensor they change, and its config."""

    config: LoraConfig
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # tensor name → (A, B), float32

    def targets(self, name: str) -> bool:
        return name in self.factors

    def apply(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` with the adapter merged in (unchanged when the adapter does not target it)."""
        if name not in self.factors:
            return weight
        lora_a, lora_b = self.factors[name]
        delta = (lora_b @ lora_a) * self.config.scaling
        if self.config.fan_in_fan_out:
            delta = delta.T
        if delta.shape != weight.shape:
            raise DonorError(f"LoRA adapter: the delta of {name} is {tuple(delta.shape)}, the weight "
                             f"{tuple(weight.shape)}; the adapter was trained on another model")
        return (weight.float() + delta).to(weight.dtype)


def load_adapter(reference: str, who: str) -> LoraAdapter:
    """The adapter in folder (or Hub repo) ``reference``, its factors read whole in float32.

    Raises:
        DonorError: unreadable adapter, or tensors that are not LoRA factors in pairs.
    """
    import safetensors.torch

    folder = adapter_folder(reference, who)
    config = read_lora_config(folder, who)
    try:
        tensors = safetensors.torch.load((folder / ADAPTER_WEIGHTS).read_bytes())  # no mapping: see reader.py
    except Exception as exc:  # noqa: BLE001 — safetensors raises its own types for a bad file
        raise DonorError(f"{who}: cannot read {folder / ADAPTER_WEIGHTS}: {' '.join(str(exc).split())[:200]}") \
            from None
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in tensors:
        if not key.endswith((_A, _B)):
            raise DonorError(f"{who}: adapter tensor {key!r} is not a LoRA factor (lora_A / lora_B of a linear "
                             "layer); merge the adapter with peft's merge_and_unload and use that folder")
        if key.endswith(_A):
            module = key.removeprefix(_PREFIX).removesuffix(_A)
            if key[: -len(_A)] + _B not in tensors:
                raise DonorError(f"{who}: adapter tensor {key!r} has no lora_B partner")
            factors[module + ".weight"] = (tensors[key].float(), tensors[key[: -len(_A)] + _B].float())
    if not factors:
        raise DonorError(f"{who}: the adapter has no LoRA factors")
    return LoraAdapter(config, factors)


def adapter_folder(reference: str, who: str) -> Path:
    """The local folder of an adapter: ``reference`` itself, or its Hub repo downloaded into the cache."""
    folder = Path(reference).expanduser()
    if folder.is_dir():
        return folder
    import huggingface_hub

    repo_id, _, revision = reference.partition("@")
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision or None,
                                                      allow_patterns=[ADAPTER_CONFIG, ADAPTER_WEIGHTS]))
    except Exception as exc:  # noqa: BLE001 — network and Hub errors come in many types
        raise DonorError(f"{who}: cannot download LoRA adapter {reference}: {' '.join(str(exc).split())[:200]}") \
            from None


def donor_adapters(donors: Mapping[str, DonorInfo]) -> dict[str, LoraAdapter]:
    """The adapter of each MODEL+LORA donor, by the recipe's model name (read once per adapter)."""
    loaded: dict[str, LoraAdapter] = {}
    adapters: dict[str, LoraAdapter] = {}
    for model, donor in donors.items():
        if donor.adapter:
            if donor.adapter not in loaded:
                loaded[donor.adapter] = load_adapter(donor.adapter, f"donor {model}")
            adapters[model] = loaded[donor.adapter]
    return adapters
