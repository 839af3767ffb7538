"""The first-run demo: two small random donors and a ready SLERP recipe, merged in seconds."""

from __future__ import annotations

from pathlib import Path

from merger_gui.core.recipe import FilterRule, Parameters, Recipe, Slice, SliceSource, Stage
from merger_gui.core.synthetic import DonorShape, write_donor

DEMO_SHAPE = DonorShape(num_layers=8, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2,
                        vocab_size=256)
DEMO_MODELS = ("demo-donor-a", "demo-donor-b")
DEMO_T = (
    FilterRule((0.0, 0.5, 0.3, 0.7, 1.0), "self_attn"),
    FilterRule((1.0, 0.5, 0.7, 0.3, 0.0), "mlp"),
    FilterRule(0.5),
)


def demo_recipe() -> Recipe:
    """A SLERP of the two demo donors over all 8 layers, with per-filter t-curves."""
    layers = (0, DEMO_SHAPE.num_layers)
    sources = tuple(SliceSource(name, layers) for name in DEMO_MODELS)
    stage = Stage("slerp", slices=(Slice(sources),), base_model=DEMO_MODELS[0],
                  parameters=Parameters({"t": DEMO_T}), dtype="float16")
    return Recipe((stage,))


def create_demo_donors(folder: str | Path) -> tuple[Recipe, dict[str, str]]:
    """Write the two demo donors under ``folder`` (reused when already there).

    Returns:
        The demo recipe and ``{model name: donor folder}`` for its models.
    """
    root = Path(folder)
    refs: dict[str, str] = {}
    for seed, name in enumerate(DEMO_MODELS, start=1):
        path = root / name
        if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
            write_donor(path, DEMO_SHAPE, dtype="float16", seed=seed)
        refs[name] = str(path)
    return demo_recipe(), refs
