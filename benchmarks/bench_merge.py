"""Wall time and peak memory of our merge against mergekit and a plain copy.

Builds two random Llama-like donors of several hundred MB (once; reused from ``--root``,
default ``benchmarks/out/``, which git ignores), then runs, each as a whole process,
``merger-gui merge`` and ``mergekit-yaml`` on (a) a passthrough interleave and (b) a
SLERP, plus ``cp -r`` of one donor (the passthrough output's byte count) as the
plain-copy baseline. Each command runs in a fresh runner process that reports its wall
time and the peak RSS of its children (``getrusage(RUSAGE_CHILDREN)``), so every figure
is one process tree's own.

Run from the repository root (mergekit is a test-only dependency)::

    .venv/bin/python benchmarks/bench_merge.py              # default donors (~700 MB each)
    .venv/bin/python benchmarks/bench_merge.py --layers 8   # quicker, smaller donors

Targets (from the issue): passthrough ≥ 3× faster than mergekit and within 1.5× of
the copy; SLERP ≥ 1.5× faster; peak RSS ≤ half of mergekit's for both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from merger_gui.core.synthetic import DonorShape, write_donor  # noqa: E402

# Runs argv, waits, prints {"wall": s, "rss": bytes} of the finished child tree.
RUNNER = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    start = time.perf_counter()
    code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"wall": wall, "rss": rss, "code": code}))
""")


@dataclass(frozen=True)
class Measurement:
    label: str
    wall: float
    rss: int
    out_bytes: int


def build_donors(root: Path, shape: DonorShape) -> tuple[Path, Path]:
    """Two fp16 donors under ``root`` (rebuilt only when their shape changed)."""
    stamp = json.dumps(shape.__dict__, sort_keys=True)
    donors = []
    for name, seed in (("donor-a", 1), ("donor-b", 2)):
        folder = root / name
        marker = folder / ".bench-shape"
        if not (marker.is_file() and marker.read_text() == stamp):
            shutil.rmtree(folder, ignore_errors=True)
            print(f"writing {folder} …", flush=True)
            write_donor(folder, shape, dtype="float16", seed=seed)
            marker.write_text(stamp)
        donors.append(folder)
    return donors[0], donors[1]


def recipes(a: Path, b: Path, layers: int) -> dict[str, str]:
    """A four-slice interleave with overlaps of ``layers`` output layers, and a SLERP."""
    q = layers // 4
    passthrough = f"""
        slices:
          - sources: [{{model: "{a}", layer_range: [0, {q}]}}]
          - sources: [{{model: "{b}", layer_range: [{q // 2}, {q // 2 + q}]}}]
          - sources: [{{model: "{a}", layer_range: [{2 * q - q // 2}, {3 * q - q // 2}]}}]
          - sources: [{{model: "{b}", layer_range: [{3 * q}, {layers}]}}]
        merge_method: passthrough
        dtype: float16
    """
    slerp = f"""
        slices:
          - sources:
              - {{model: "{a}", layer_range: [0, {layers}]}}
              - {{model: "{b}", layer_range: [0, {layers}]}}
        merge_method: slerp
        base_model: "{a}"
        parameters:
          t:
            - {{filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}}
            - {{filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}}
            - {{value: 0.5}}
        dtype: float16
    """
    return {"passthrough": textwrap.dedent(passthrough), "slerp": textwrap.dedent(slerp)}


def measure(label: str, argv: list[str], out: Path) -> Measurement:
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run([sys.executable, "-c", RUNNER, *argv], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report["code"] != 0:
        raise SystemExit(f"{label} failed ({report['code']}): {' '.join(argv)}")
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors")) if out.is_dir() else 0
    shutil.rmtree(out, ignore_errors=True)
    return Measurement(label, report["wall"], report["rss"], size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "benchmarks" / "out", help="donor and output folder")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--no-mergekit", action="store_true", help="skip mergekit (not installed)")
    args = parser.parse_args()

    shape = DonorShape(num_layers=args.layers, hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_heads=16, num_kv_heads=8, vocab_size=args.vocab)
    args.root.mkdir(parents=True, exist_ok=True)
    a, b = build_donors(args.root, shape)
    bin_dir = Path(sys.executable).parent
    out = args.root / "out"
    results: dict[str, dict[str, Measurement]] = {}
    for name, text in recipes(a, b, args.layers).items():
        recipe = args.root / f"{name}.yml"
        recipe.write_text(text)
        row = {"ours": measure(f"ours {name}", [str(bin_dir / "merger-gui"), "merge", str(recipe), str(out)], out)}
        if not args.no_mergekit:
            row["mergekit"] = measure(f"mergekit {name}", [str(bin_dir / "mergekit-yaml"), str(recipe), str(out),
                                                           "--lazy-unpickle", "--allow-crimes", "--quiet"], out)
        results[name] = row
    copy = measure("cp -r", ["cp", "-r", str(a), str(out)], out)

    print(f"\ndonors: {sum(f.stat().st_size for f in a.glob('*.safetensors')) / 1e6:.0f} MB each, "
          f"{args.layers} layers, hidden {args.hidden}")
    print(f"{'run':<22}{'wall s':>9}{'peak RSS MB':>13}{'MB/s':>9}   ratios")
    print(f"{'cp -r (one donor)':<22}{copy.wall:>9.2f}{copy.rss / 1e6:>13.0f}{copy.out_bytes / 1e6 / copy.wall:>9.0f}")
    for name, row in results.items():
        for who, m in row.items():
            ratios = ""
            if who == "ours" and "mergekit" in row:
                mk = row["mergekit"]
                ratios = f"{mk.wall / m.wall:.2f}x faster than mergekit, RSS {m.rss / mk.rss:.2f} of mergekit's"
                if name == "passthrough":
                    ratios += f", {m.wall / copy.wall:.2f}x the copy"
            figures = f"{m.wall:>9.2f}{m.rss / 1e6:>13.0f}{m.out_bytes / 1e6 / m.wall:>9.0f}"
            print(f"{who + ' ' + name:<22}{figures}   {ratios}")


if __name__ == "__main__":
    main()
