"""``merger-gui estimate``: size, GPU memory and merge-time needs of a recipe or a model."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from merger_gui.cli.common import (
    add_donor_argument, add_json_argument, checked_recipe, load_recipe_file, print_json, report_errors,
)
from merger_gui.cli.moe_commands import estimate_moe_recipe, moe_recipe_file
from merger_gui.core.errors import UserError
from merger_gui.core.estimator import (
    GIB_NOTE, Estimate, EstimateOptions, MoeEstimate, RecipeEstimate, estimate_model, estimate_plan, gib_to_bytes,
)
from merger_gui.core.plan import plan_recipe
from merger_gui.core.quantization import parse_weight_format
from merger_gui.core.resolve import resolve_donor
from merger_gui.core.runtime_presets import PRESETS
from merger_gui.core.units import GIB, format_size


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="parameters, file size, GPU memory and KV cache of a recipe's output or a model",
        description=f"Estimate a recipe's output (every stage, compared with its donors) or a single model. "
                    f"{GIB_NOTE}.",
    )
    parser.add_argument("target", metavar="RECIPE_OR_MODEL",
                        help="recipe (.yaml/.yml or an existing file), model folder, repo id or profile:NAME")
    add_donor_argument(parser)
    parser.add_argument("--context", type=at_least_one("context", " token"), default=4096, metavar="N",
                        help="tokens per sequence (default 4096)")
    parser.add_argument("--batch", type=at_least_one("batch"), default=1, metavar="B",
                        help="sequences held at once (default 1)")
    parser.add_argument("--weights", default="stored", metavar="DTYPE_OR_QUANT",
                        help="stored (default), fp32, fp16, bf16, fp8, a GGUF type such as Q4_K_M, or exl2:BITS")
    parser.add_argument("--kv-dtype", default="f16", metavar="T",
                        help="KV cache type: f16 (default), bf16, f32, fp8, q8_0, q4_0")
    parser.add_argument("--gpu-memory", type=gib_size, metavar="GIB", help="solve the largest context that fits")
    parser.add_argument("--runtime", default="llama.cpp", choices=sorted(PRESETS), type=str.lower,
                        help="runtime preset for compute buffer and overhead (default llama.cpp)")
    parser.add_argument("--compute-buffer", type=gib_size, metavar="GIB", help="replace the preset's compute buffer")
    parser.add_argument("--overhead", type=gib_size, metavar="GIB", help="replace the preset's runtime overhead")
    parser.add_argument("--full-kv", action="store_true",
                        help="count every position in sliding-window layers (engines that do not exploit the window)")
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = EstimateOptions(
        context=args.context, batch=args.batch, weights=args.weights, kv_dtype=args.kv_dtype,
        runtime=args.runtime, gpu_memory_bytes=args.gpu_memory, compute_buffer_bytes=args.compute_buffer,
        overhead_bytes=args.overhead, sliding_window=not args.full_kv,
    )
    moe = moe_recipe_file(args.target) if _is_recipe(args.target) else None
    if moe is not None:
        return _print_moe(estimate_moe_recipe(moe, args.target, args.donor, options), Path(args.target).stem, args.json)
    if _is_recipe(args.target):
        result = _estimate_recipe(Path(args.target), args.donor, options)
        if result is None:
            return 1
        if args.json:
            print_json(_recipe_json(result))
        else:
            print(render(result, Path(args.target).stem))
        return 0
    if args.donor:
        raise UserError("--donor applies to recipes only")
    donor = resolve_donor(args.target)
    estimate = estimate_model(donor, options)
    if args.json:
        print_json(dict(_estimate_json(estimate), download_bytes=donor.download_bytes))
    else:
        text = render(estimate)
        if donor.download_bytes:
            text += "\n\n" + _row("download (weights not in the Hub cache)", donor.download_bytes)
        print(text)
    return 0


def gib_size(text: str) -> int:
    """Bytes of a ``GIB`` option value: a finite, non-negative number of GiB."""
    try:
        gib = float(text)
    except ValueError:
        gib = math.nan
    if not math.isfinite(gib * GIB) or gib < 0:  # 1e300 GiB is no byte count either
        raise argparse.ArgumentTypeError(f"expected a number of GiB (0 or more), not {text!r}")
    return gib_to_bytes(gib)


def at_least_one(what: str, unit: str = "", most: int = 2**31) -> Callable[[str], int]:
    """The type of an option taking a whole number from 1 to ``most``; ``what`` and ``unit`` word its error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, not {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{what} must be at least 1{unit}, not {value}")
        if value > most:  # an absurd count prints absurd figures
            raise argparse.ArgumentTypeError(f"{what} must be at most {most:,}{unit}{'s' if unit else ''}, not {text}")
        return value
    return parse


def _is_recipe(target: str) -> bool:
    return target.lower().endswith((".yaml", ".yml")) or Path(target).is_file()


def _estimate_recipe(path: Path, donor_items: list[str], options: EstimateOptions) -> RecipeEstimate | None:
    """The recipe's estimate; None, with its errors reported, when the recipe has errors (no figures
    for a recipe that cannot be merged as written)."""
    recipe = load_recipe_file(path)
    donors, findings = checked_recipe(recipe, path, donor_items)
    if report_errors(findings):
        return None
    return estimate_plan(plan_recipe(recipe, donors), donors, options)


def _print_moe(result: MoeEstimate | None, title: str, as_json: bool) -> int:
    """Print an MoE's estimate with its total and active parameters; 1 when it had errors (None)."""
    if result is None:
        return 1
    if as_json:
        print_json(dict(_estimate_json(result.estimate), total_params=result.total_params,
                        active_params=result.active_params))
        return 0
    lines = _estimate_lines(result.estimate, f"{title} (MoE)")
    lines.insert(1, f"{result.total_params:,} parameters in total, {result.active_params:,} active per token")
    print("\n".join(lines))
    return 0


def _estimate_json(estimate: Estimate) -> dict[str, Any]:
    options = estimate.options
    data: dict[str, Any] = {
        "units": f"bytes; {GIB_NOTE}",
        "name": estimate.name,
        "num_layers": estimate.num_layers,
        "params": estimate.params,
        "weights": estimate.weights_label,
        "weights_bytes": estimate.weights_bytes,
        "host_weights_bytes": estimate.host_weights_bytes,
        "kv_dtype": options.kv_dtype,
        "kv_bytes_per_token": estimate.kv.bytes_per_token,
        "kv_cache_bytes": estimate.kv_cache_bytes,
        "kv_cache_full_bytes": estimate.kv.full_bytes,
        "kv_cache_windowed_bytes": estimate.kv.windowed_bytes,
        "sliding_window_layers": estimate.kv.windowed_layer_count,
        "kv_counts_window": estimate.kv_counts_window,
        "compute_buffer_bytes": estimate.compute_buffer_bytes,
        "overhead_bytes": estimate.overhead_bytes,
        "total_bytes": estimate.total_bytes,
        "context": options.context,
        "batch": options.batch,
        "runtime": options.preset.name,
        "stored_bytes": estimate.stored_bytes,
        "file_sizes": dict(estimate.file_sizes),
    }
    if options.gpu_memory_bytes is not None:
        data["gpu_memory_bytes"] = options.gpu_memory_bytes
        data["max_context"] = estimate.max_context
        data["trained_context"] = estimate.trained_context
    return data


def _recipe_json(result: RecipeEstimate) -> dict[str, Any]:
    data = _estimate_json(result.final)
    data["stages"] = [dict(_estimate_json(e), stage=label) for e, label in zip(result.stages, result.stage_labels)]
    data["donors"] = [
        {"name": c.name, "params": c.estimate.params, "num_layers": c.estimate.num_layers,
         "total_bytes": c.estimate.total_bytes, "delta_bytes": c.delta_bytes, "summary": c.describe()}
        for c in result.donors
    ]
    merge = result.merge
    data["merge"] = {
        "download_bytes": merge.download_bytes, "output_disk_bytes": merge.output_disk_bytes,
        "intermediate_disk_bytes": merge.intermediate_disk_bytes, "disk_bytes": merge.disk_bytes,
        "peak_ram_bytes": merge.peak_ram_bytes,
    }
    return data


def render(result: Estimate | RecipeEstimate, title: str | None = None) -> str:
    """The human-readable table of an estimate; ``title`` names a recipe's output."""
    if isinstance(result, Estimate):
        return "\n".join(_estimate_lines(result, title or result.name))
    final = result.stage_labels[-1]
    heading = f"{title}: {final}" if title and len(result.stages) > 1 else title or final
    lines = _estimate_lines(result.final, heading)
    if len(result.stages) > 1:
        lines += ["", "Stages:"]
        for estimate, label in zip(result.stages, result.stage_labels):
            lines.append(f"  {label:<32} {estimate.num_layers:>4} layers  {estimate.params:>16,} params  "
                         f"{format_size(estimate.total_bytes, 2):>11}")
    if result.donors:
        lines += ["", "Compared with donors (same options):"]
        lines += [f"  {c.describe()}  ({c.estimate.num_layers} layers, {format_size(c.estimate.total_bytes, 2)})"
                  for c in result.donors]
    merge = result.merge
    lines += [
        "", "Merge needs:",
        _row("download (donors not in the Hub cache)", merge.download_bytes),
        _row("disk for the output", merge.output_disk_bytes),
    ]
    if merge.intermediate_disk_bytes:
        lines.append(_row("disk for intermediate stages", merge.intermediate_disk_bytes))
    lines.append(_row("peak RAM of the merge engine", merge.peak_ram_bytes))
    return "\n".join(lines)


def _row(label: str, nbytes: int, signed: bool = False) -> str:
    return f"  {label:<52} {format_size(nbytes, 2, signed=signed):>12}"


def _estimate_lines(e: Estimate, title: str) -> list[str]:
    o = e.options
    kv = e.kv
    lines = [
        f"{title}: {e.num_layers} layers, {e.params:,} parameters   ({GIB_NOTE})",
        f"context {o.context:,} x batch {o.batch}, weights {e.weights_label}, KV {o.kv_dtype}, runtime {o.preset.name}",
        "",
        _row(f"weights ({e.weights_label})", e.weights_bytes),
    ]
    if e.host_weights_bytes:
        lines.append(_row("  token embeddings kept in system RAM", -e.host_weights_bytes, signed=True))
    kib = kv.bytes_per_token / 1024
    per_token = f"{kib:,.0f}" if kib.is_integer() else f"{kib:,.2f}"
    lines.append(_row(f"KV cache ({o.kv_dtype}, {per_token} KiB/token)", e.kv_cache_bytes))
    if kv.windowed_layer_count:
        counted, other, value = (("windowed", "every position", kv.full_bytes) if e.kv_counts_window
                                 else ("full", "the window only", kv.windowed_bytes))
        lines.append(f"    {kv.windowed_layer_count} sliding-window layers, counted {counted}; "
                     f"{other}: {format_size(value, 2)}")
    lines += [
        _row(e.compute_label, e.compute_buffer_bytes),
        _row(e.overhead_label, e.overhead_bytes),
        _row("total GPU memory", e.total_bytes),
    ]
    if o.gpu_memory_bytes is not None:
        fits = "no limit below 128M tokens" if e.max_context is None else (
            "does not fit" if e.max_context == 0 else f"{e.max_context:,} tokens")
        lines.append(f"  {'largest context in ' + format_size(o.gpu_memory_bytes):<52} {fits:>12}")
        if e.trained_context and (e.max_context is None or e.max_context > e.trained_context):
            lines.append(f"  {'context the model is trained for':<52} {f'{e.trained_context:,} tokens':>12}")
    return lines + ["", *_file_size_lines(e)]


def _file_size_lines(e: Estimate) -> list[str]:
    """``File sizes (GiB): stored … fp32 … fp16 … fp8 …`` and a ``GGUF:`` line."""
    sizes = [("stored", e.stored_bytes), *e.file_sizes]
    floats = [f"{name} {size / GIB:.2f}" for name, size in sizes if parse_weight_format(name).kind != "gguf"]
    gguf = [f"{name} {size / GIB:.2f}" for name, size in sizes if parse_weight_format(name).kind == "gguf"]
    return ["File sizes (GiB): " + "  ".join(floats), "  GGUF: " + "  ".join(gguf)]

