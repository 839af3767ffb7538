"""Scaffolding of the mergekit parity tests: donors, recipes, mergekit's outputs and ours.

A parity test file declares its donors (name → spec) and its recipes (name → YAML template
in which ``{NAME}`` stands for donor NAME's folder); :func:`build_workspace` writes them and
runs mergekit once over every recipe, :func:`run_ours` merges one recipe with our engine and
:func:`assert_same_model` compares the two outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from merger_gui.core.donor import DonorInfo
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.synthetic import DonorShape, write_donor
from merger_gui.engine.run import MergeOptions, MergeWarning, run_merge
from model_folder import folder_config, folder_weights

# (shape, write_donor keyword arguments), or a function that writes the donor into a folder.
DonorSpec = tuple[DonorShape, dict] | Callable[[Path], Path]

# Runs every job in one interpreter (one import of torch/transformers/mergekit). Multi-document
# files run stage by stage, as mergekit-multi does: a later stage's reference to a stage name is
# that stage's output.
MERGEKIT_DRIVER = """
import json, os, sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions

for job in json.loads(sys.argv[1]):
    docs = [d for d in yaml.safe_load_all(open(job["recipe"])) if d]
    outputs = {}
    for k, doc in enumerate(docs):
        name = doc.pop("name", None)
        text = yaml.safe_dump(doc)
        for stage, path in outputs.items():
            text = text.replace(stage, path)
        target = job["out"] if k == len(docs) - 1 else os.path.join(job["out"] + ".stages", name)
        options = MergeOptions(allow_crimes=True, lazy_unpickle=True, random_seed=job["seed"],
                               quiet=True, write_model_card=False, copy_tokenizer=True,
                               lora_merge_cache=job["out"] + ".lora")
        run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), target, options=options)
        if name:
            outputs[name] = target
"""


@dataclass(frozen=True)
class ParityWorkspace:
    """Donor folders, recipe files and mergekit's outputs under ``root``, merged with ``seed``."""

    root: Path
    donors: dict[str, Path]
    seed: int

    def recipe_text(self, name: str) -> str:
        return (self.root / f"{name}.yml").read_text()

    def mergekit_folder(self, name: str) -> Path:
        return self.root / "mergekit" / name

    def ours_folder(self, name: str, seed: int | None = None, run: str = "ours") -> Path:
        return self.root / f"{run}-{self.seed if seed is None else seed}" / name

    def donor_infos(self, name: str) -> dict[str, DonorInfo]:
        """The facts of the donors recipe ``name`` uses, by folder."""
        text = self.recipe_text(name)
        return {str(p): inspect_folder(p) for p in self.donors.values() if str(p) in text}


@dataclass(frozen=True)
class OurMerge:
    folder: Path
    warnings: list[str]


def build_workspace(root: Path, donors: Mapping[str, DonorSpec], recipes: Mapping[str, str],
                    seed: int) -> ParityWorkspace:
    """Write ``donors`` and ``recipes`` under ``root`` and mergekit's output of every recipe."""
    folders = {name: _write_donor(root / "donors" / name, spec) for name, spec in donors.items()}
    jobs = []
    for name, template in recipes.items():
        recipe = root / f"{name}.yml"
        recipe.write_text(_recipe_text(template, folders))
        jobs.append({"recipe": str(recipe), "out": str(root / "mergekit" / name), "seed": seed})
    result = subprocess.run([sys.executable, "-c", MERGEKIT_DRIVER, json.dumps(jobs)],
                            capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return ParityWorkspace(root, folders, seed)


def _write_donor(folder: Path, spec: DonorSpec) -> Path:
    if callable(spec):
        return spec(folder)
    shape, kwargs = spec
    return write_donor(folder, shape, **kwargs)


def _recipe_text(template: str, donors: Mapping[str, Path]) -> str:
    text = textwrap.dedent(template)
    for name, folder in donors.items():
        text = text.replace("{" + name + "}", str(folder))
    return text


def run_ours(workspace: ParityWorkspace, name: str, *, seed: int | None = None, run: str = "ours") -> OurMerge:
    """Merge recipe ``name`` with our engine into a new folder named by ``run`` and the seed."""
    seed = workspace.seed if seed is None else seed
    out = workspace.ours_folder(name, seed, run)
    events = list(run_merge(load_recipe_text(workspace.recipe_text(name)), workspace.donor_infos(name), out,
                            MergeOptions(seed=seed)))
    assert events, "run_merge yielded nothing"
    return OurMerge(out, [e.message for e in events if isinstance(e, MergeWarning)])


def assert_same_model(ours: Path, theirs: Path, config_keys: Sequence[str] = ()) -> None:
    """The same tensor names, dtypes, shapes and bits (signed zeros and NaNs included) and the
    same ``config_keys`` in config.json."""
    a, b = folder_weights(ours), folder_weights(theirs)
    assert sorted(a) == sorted(b)
    for tensor in b:
        assert (a[tensor].dtype, a[tensor].shape) == (b[tensor].dtype, b[tensor].shape), tensor
        assert same_bits(a[tensor], b[tensor]), tensor
    for key in config_keys:
        assert folder_config(ours)[key] == folder_config(theirs)[key], key


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality: unlike values, NaN equals NaN and -0 differs from 0."""
    integer = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.view(integer), b.view(integer))
