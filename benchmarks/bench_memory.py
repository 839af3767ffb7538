"""Peak RAM of ``merger-gui merge`` for every merge method, against the estimator's figure.

Builds three small random donors (once; reused from ``--root``, default ``benchmarks/out/``,
which git ignores) whose largest tensors, the embedding and the LM head (vocab 32000 ×
hidden 1024), dominate, so the peak is set by the method's work on one of them. Each
method then merges them (three models where the method takes three) as a whole
``merger-gui merge`` process, run and measured by ``bench_merge.run_once`` (a fresh runner
process reporting the peak RSS of its children). The estimate is what ``merger-gui
estimate`` shows as the merge's peak RAM (:func:`merger_gui.core.estimator.estimate_plan`).

Cases: ``fp16`` (float16 donors, float16 merge), ``bf16`` (bfloat16 donors and merge) and
``bf16-fp32`` (bfloat16 donors, ``dtype: float32``). Run from the repository root::

    .venv/bin/python benchmarks/bench_memory.py                        # every method, every case
    .venv/bin/python benchmarks/bench_memory.py --methods ties della --cases fp16

Prints a markdown table: measured and estimated peak RSS in MiB and their ratio; the
estimate should be an upper bound no more than ~1.5× the measured peak.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_merge import REPO, run_once

from merger_gui.core.estimator import estimate_plan
from merger_gui.core.methods import METHODS
from merger_gui.core.plan import plan_recipe
from merger_gui.core.recipe_yaml import load_recipe
from merger_gui.core.resolve import resolve_recipe_donors
from merger_gui.core.synthetic import DonorShape, write_donor

MIB = 2**20
SHAPE = DonorShape(num_layers=2, hidden_size=1024, intermediate_size=2816, num_heads=16, num_kv_heads=8,
                   vocab_size=32000)
CASES = {  # name → (donor dtype, the recipe's dtype or None)
    "fp16": ("float16", None),
    "bf16": ("bfloat16", None),
    "bf16-fp32": ("bfloat16", "float32"),
}
SPARSE = {"weight": 0.5, "density": 0.5}


@dataclass(frozen=True)
class MethodCase:
    """How a method is benchmarked: donors used (the first is the base when ``base``) and parameters."""

    models: int
    base: bool
    shared: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, Any] = field(default_factory=dict)  # every model but the base


METHOD_CASES: dict[str, MethodCase] = {
    "passthrough": MethodCase(1, False),
    "slerp": MethodCase(2, True, {"t": 0.5}),
    "linear": MethodCase(3, False, per_model={"weight": 1.0}),
    "task_arithmetic": MethodCase(3, True, per_model={"weight": 0.5}),
    "ties": MethodCase(3, True, per_model=SPARSE),
    "dare_ties": MethodCase(3, True, per_model=SPARSE),
    "dare_linear": MethodCase(3, True, per_model=SPARSE),
    "breadcrumbs": MethodCase(3, True, per_model=SPARSE | {"gamma": 0.01}),
    "breadcrumbs_ties": MethodCase(3, True, per_model=SPARSE | {"gamma": 0.01}),
    "della": MethodCase(3, True, per_model=SPARSE | {"epsilon": 0.15}),
    "della_linear": MethodCase(3, True, per_model=SPARSE | {"epsilon": 0.15}),
    "sce": MethodCase(3, True, {"select_topk": 0.5}),
    "model_stock": MethodCase(3, True),
    "nuslerp": MethodCase(3, True, per_model={"weight": 0.5}),
    "multislerp": MethodCase(3, True, per_model={"weight": 0.5}),
    "karcher": MethodCase(3, False),
    "nearswap": MethodCase(2, True, {"t": 0.01}),
    "arcee_fusion": MethodCase(2, True),
    "ram": MethodCase(3, True),
    "ramplus_tl": MethodCase(3, True),
}


@dataclass(frozen=True)
class Row:
    method: str
    case: str
    measured: int
    estimated: int

    @property
    def ratio(self) -> float:
        return self.estimated / self.measured


def build_donors(root: Path, dtype: str) -> list[Path]:
    """Three random donors of ``SHAPE`` in ``dtype`` under ``root`` (rebuilt only when their shape changed)."""
    stamp = json.dumps([SHAPE.__dict__, dtype], sort_keys=True)
    folders = []
    for seed in (1, 2, 3):
        folder = root / f"memory-{dtype}-{seed}"
        marker = folder / ".bench-shape"
        if not (marker.is_file() and marker.read_text() == stamp):
            shutil.rmtree(folder, ignore_errors=True)
            print(f"writing {folder} …", flush=True)
            write_donor(folder, SHAPE, dtype=dtype, seed=seed)
            marker.write_text(stamp)
        folders.append(folder)
    return folders


def recipe_text(method: str, donors: list[Path], dtype: str | None) -> str:
    """A one-slice recipe of ``method`` over its share of ``donors`` (JSON, which is YAML)."""
    case = METHOD_CASES[method]
    models = []
    for k, folder in enumerate(donors[:case.models]):
        entry: dict[str, Any] = {"model": str(folder)}
        if case.per_model and not (case.base and k == 0):
            entry["parameters"] = case.per_model
        models.append(entry)
    recipe: dict[str, Any] = {"models": models, "merge_method": method}
    if case.base:
        recipe["base_model"] = str(donors[0])
    if case.shared:
        recipe["parameters"] = case.shared
    if dtype:
        recipe["dtype"] = dtype
    return json.dumps(recipe, indent=2)


def estimated_peak(recipe_file: Path) -> int:
    """The merge's peak RAM as ``merger-gui estimate`` reports it."""
    recipe = load_recipe(recipe_file)
    donors, errors = resolve_recipe_donors(recipe, {}, base_dir=recipe_file.parent)
    if errors:
        raise SystemExit(f"{recipe_file}: {errors}")
    return estimate_plan(plan_recipe(recipe, donors), donors).merge.peak_ram_bytes


def measure(method: str, case: str, root: Path, donors: list[Path], repeat: int) -> Row:
    """Lowest peak RSS of ``repeat`` merges of ``method``, and its estimate."""
    recipe_file = root / f"memory-{method}-{case}.yml"
    recipe_file.write_text(recipe_text(method, donors, CASES[case][1]))
    out = root / "memory-out"
    argv = [str(Path(sys.executable).parent / "merger-gui"), "merge", str(recipe_file), str(out)]
    used = donors[:METHOD_CASES[method].models]
    rss = min(run_once(argv, out, used).rss for _ in range(repeat))
    return Row(method, case, rss, estimated_peak(recipe_file))


def print_table(rows: list[Row]) -> None:
    print("| method | case | measured MiB | estimated MiB | estimated / measured |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        flag = "" if 1 <= row.ratio <= 1.5 else " ⚠"
        print(f"| {row.method} | {row.case} | {row.measured / MIB:.0f} | {row.estimated / MIB:.0f} "
              f"| {row.ratio:.2f}{flag} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "benchmarks" / "out", help="donor and output folder")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHOD_CASES),
                        help="methods to run (default all)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES),
                        help="dtype cases to run (default all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per merge; the lowest peak is reported")
    args = parser.parse_args()
    if set(METHOD_CASES) != set(METHODS):
        raise SystemExit(f"methods without a benchmark case: {sorted(set(METHODS) - set(METHOD_CASES))}")

    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases:
        donors = build_donors(args.root, CASES[case][0])
        for method in args.methods:
            rows.append(measure(method, case, args.root, donors, args.repeat))
            print(f"{method} {case}: {rows[-1].measured / MIB:.0f} MiB measured, "
                  f"{rows[-1].estimated / MIB:.0f} MiB estimated", flush=True)
    print(f"\ndonors: {SHAPE.num_layers} layers, hidden {SHAPE.hidden_size}, vocab {SHAPE.vocab_size} "
          f"(largest tensor {SHAPE.vocab_size * SHAPE.hidden_size / 1e6:.1f}M elements)\n")
    print_table(rows)


if __name__ == "__main__":
    main()
