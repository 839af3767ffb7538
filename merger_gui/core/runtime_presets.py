"""Inference runtimes' memory beyond weights and KV cache, as labelled, overridable presets.

Compute buffers and runtime overhead cannot be derived exactly from a model; these are
the rules of thumb of the README's "The estimator" section, kept separate so the user can see and
replace each term.
"""

from __future__ import annotations

from dataclasses import dataclass

from .donor import DonorInfo
from .errors import UserError
from .units import GIB, MIB


@dataclass(frozen=True)
class RuntimePreset:
    """One runtime's rules for the terms that are not weights or KV cache."""

    name: str
    compute_label: str
    overhead_label: str
    window_margin: int  # cached positions of a sliding-window layer = window + margin
    embeddings_on_host: bool  # untied token embeddings stay in system RAM
    window_families: tuple[str, ...] | None = None  # families whose window it exploits; None = all

    def exploits_window(self, model: DonorInfo) -> bool:
        """Does this runtime cache only the window of ``model``'s sliding-window layers?"""
        return self.window_families is None or model.family in self.window_families

    def compute_buffer_bytes(self, model: DonorInfo, context: int, batch: int) -> int:
        """Activation / scratch memory at ``context`` tokens per sequence for ``batch`` sequences."""
        tokens = context * batch
        if self.name == "llama.cpp":
            # (ctx/1024 · 2 + 0.75) · n_heads MiB, in exact integer bytes.
            return (tokens * 2 * MIB // 1024 + 3 * MIB // 4) * model.num_heads
        if self.name == "vllm":
            return 3 * GIB // 2  # CUDA graph capture (1.5–1.9 GiB)
        # transformers: hidden, q/k/v/o and MLP activations of one prefill pass in 16-bit.
        return tokens * (4 * model.hidden_size + 3 * model.intermediate_size) * 2

    def overhead_bytes(self, weights_bytes: int) -> int:
        """Fixed runtime memory (CUDA context, allocator, framework)."""
        if self.name == "vllm":
            return 23 * GIB // 10 + weights_bytes // 20  # 2.3 GiB + 5 % of weights
        return GIB // 2


PRESETS = {p.name: p for p in (
    RuntimePreset("llama.cpp", "compute buffer (flash attention off, upper bound)",
                  "runtime overhead (CUDA context)", window_margin=0, embeddings_on_host=True,
                  # llama.cpp runs Mistral v0.1 as plain Llama, with full attention in every layer.
                  window_families=("gemma2",)),
    RuntimePreset("vllm", "CUDA graphs", "runtime overhead (2.3 GiB + 5 % of weights)",
                  window_margin=0, embeddings_on_host=False),
    # DynamicSlidingWindowLayer keeps the last window - 1 positions.
    RuntimePreset("transformers", "activations (one prefill pass)", "runtime overhead (CUDA context)",
                  window_margin=-1, embeddings_on_host=False),
)}


def runtime_preset(name: str) -> RuntimePreset:
    """The preset called ``name`` (``llama.cpp``, ``vllm``, ``transformers``; case-insensitive).

    Raises:
        UserError: for an unknown runtime.
    """
    key = name.strip().lower()
    key = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "hf": "transformers"}.get(key, key)
    if key not in PRESETS:
        raise UserError(f"unknown runtime {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[key]
