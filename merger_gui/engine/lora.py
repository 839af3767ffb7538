"""MODEL+LORA donors: a PEFT LoRA adapter applied to its model's tensors as they are read.

mergekit merges the adapter into the model with PEFT's ``merge_and_unload`` before merging
(``W' = W + scaling · B @ A`` for each targeted module). PEFT keeps the adapter in float32
on the CPU (it upcasts half-precision adapters) and adds the float32 delta to the weight in
place, so the sum is taken in float32 and rounded once to the weight's dtype; doing the same
here gives mergekit's bits. The adapter is small (``r`` rows per module) and read whole once;
each targeted tensor is adapted on the fly, so no merged copy of the model is written (it
would cost a full model's disk to save about 9 % of a merge's time; README measures it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merger_gui.core.donor import DonorInfo, TensorInfo
from merger_gui.core.dtypes import BY_CODE
from merger_gui.core.errors import DonorError
from merger_gui.core.lora_config import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORA_A, LORA_B, PEFT_PREFIX, LoraConfig, adapter_deltas, check_adapter_fits,
    read_lora_config,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LoraAdapter:
    """An adapter's factors by the model tensor they change, and its config."""

    config: LoraConfig
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # tensor name → (A, B), float32
    shapes: Mapping[str, tuple[int, ...]]  # tensor name → shape of its delta

    def targets(self, name: str) -> bool:
        return name in self.factors

    def apply(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` with the adapter merged in (unchanged when the adapter does not target it; a
        float32 ``weight`` is changed in place, as the reader hands out tensors of their own)."""
        if name not in self.factors:
            return weight
        lora_a, lora_b = self.factors[name]
        delta = (lora_b @ lora_a).mul_(self.config.scaling)
        if self.config.fan_in_fan_out:
            delta = delta.T
        if delta.shape != weight.shape:
            raise DonorError(f"LoRA adapter: the delta of {name} is {tuple(delta.shape)}, the weight "
                             f"{tuple(weight.shape)}; the adapter was trained on another model")
        merged = weight.float()  # the same tensor when float32
        merged += delta
        del delta  # the rounded copy below is the only other one alive
        return merged.to(weight.dtype)


def load_adapter(reference: str, who: str) -> LoraAdapter:
    """The adapter in folder (or Hub repo) ``reference``, its factors read whole in float32.

    Raises:
        DonorError: unreadable adapter, tensors that are not LoRA factors in pairs, ranks that disagree.
    """
    import safetensors.torch

    folder = adapter_folder(reference, who)
    config = read_lora_config(folder, who)
    try:
        tensors = safetensors.torch.load((folder / ADAPTER_WEIGHTS).read_bytes())  # no mapping: see reader.py
    except Exception as exc:  # noqa: BLE001 — safetensors raises its own types for a bad file
        raise DonorError(f"{who}: cannot read {folder / ADAPTER_WEIGHTS}: {' '.join(str(exc).split())[:200]}") \
            from None
    infos = {key: TensorInfo(key, tuple(t.shape), "F32") for key, t in tensors.items()}
    shapes = adapter_deltas(infos, config, who)
    factors = {}
    for name in shapes:
        module = PEFT_PREFIX + name.removesuffix(".weight")
        factors[name] = (tensors[module + LORA_A].float(), tensors[module + LORA_B].float())
    return LoraAdapter(config, factors, shapes)


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
            adapter = adapters[model] = loaded[donor.adapter]
            check_adapter_fits(adapter.shapes, donor, f"donor {model}")
    return adapters


def merge_adapter(model: Any, name: str, donor: DonorInfo) -> None:
    """Merge ``donor``'s adapter into ``model`` (loaded by transformers from ``donor``'s folder) in
    place: each targeted weight becomes what mergekit merges, in its stored dtype, then the model's.

    Raises:
        DonorError: an adapter that does not fit the donor, or targets a weight the model lacks.
    """
    import torch

    from .reader import torch_dtype

    assert donor.adapter is not None
    adapter = donor_adapters({name: donor})[name]
    parameters = dict(model.named_parameters())
    for tensor in adapter.factors:
        parameter, info = parameters.get(tensor), donor.tensor(tensor)
        if parameter is None or info is None or info.dtype not in BY_CODE:
            raise DonorError(f"donor {name}: transformers loads no weight {tensor} for the adapter to change")
        stored = parameter.detach().to("cpu", torch_dtype(info.dtype), copy=True)  # exact: the model widened it
        with torch.no_grad():
            parameter.copy_(adapter.apply(tensor, stored).to(parameter.dtype))


def adapter_fingerprint(donor: DonorInfo) -> str:
    """``+`` and what identifies ``donor``'s adapter (its folder's files, else its Hub reference) for
    caches keyed by weights; "" without an adapter."""
    if not donor.adapter:
        return ""
    from .fingerprint import folder_fingerprint

    return "+" + (folder_fingerprint(donor.adapter) if Path(donor.adapter).is_dir() else donor.adapter)
