"""Wall time and peak memory of our merge against mergekit and a plain copy.

Builds two random Llama-like donors of several hundred MB (once; reused from ``--root``,
default ``benchmarks/out/``, which git ignores), then runs, each as a whole process,
``merger-gui merge`` and ``mergekit-yaml`` on (a) a passthrough interleave and (b) a
SLERP, plus ``cp -r`` of one donor (the passthrough output's byte count) as the
plain-copy baseline. Each command runs in a fresh runner process that reports its wall
time and the peak RSS of its children (``getrusage(RUSAGE_CHILDREN)``), so every figure
is one process tree's own.

Run from the repository root (mergekit is a test-only dependency)::

    .venv/bin/python benchmarks/bench_merge.py                # small donors (~700 MB each)
    .venv/bin/python benchmarks/bench_merge.py --size large   # ~2.4 GB each (TinyLlama-sized)
    .venv/bin/python benchmarks/bench_merge.py --layers 8     # quicker, smaller donors

Every command runs ``--repeat`` times (default 2), the rounds interleaved so a change in
the machine's load hits every command alike; the best wall time, the least CPU time (user +
system, steadier than wall time on a busy machine) and the lowest peak RSS are reported, as
a markdown table. ``--baseline DIR`` runs our merges a second time from another source tree
(e.g. ``git archive COMMIT | tar -x -C DIR``), interleaved, to measure a change. Before
each run the donors are read once, so every command finds them in the page cache (some VMs
page idle cache out within seconds), and the page cache is synced, so no run pays for
writing back the previous one's output.
merger_gui's modules are byte-compiled first, as ``pip install`` does (mergekit's are).

Targets (from the issue): passthrough ≥ 3× faster than mergekit and within 1.5× of
the copy; SLERP ≥ 1.5× faster; peak RSS ≤ half of mergekit's for both.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from merger_gui.core.donor import TensorInfo  # noqa: E402
from merger_gui.core.synthetic import DonorShape, donor_config, donor_tensor_shapes, tokenizer_files  # noqa: E402
from merger_gui.engine.writer import ShardedWriter  # noqa: E402

SIZES = {  # name → (layers, hidden, intermediate, vocab)
    "small": (24, 1024, 2816, 32000),
    "large": (24, 2048, 5632, 32000),
}

# Runs argv, waits, prints {"wall": s, "cpu": s, "rss": bytes} of the finished child tree.
RUNNER = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    start = time.perf_counter()
    code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    print(json.dumps({"wall": wall, "cpu": cpu, "rss": usage.ru_maxrss * 1024, "code": code}))
""")


@dataclass(frozen=True)
class Measurement:
    label: str
    wall: float
    cpu: float
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
            write_streamed_donor(folder, shape, seed)
            marker.write_text(stamp)
        donors.append(folder)
    return donors[0], donors[1]


def write_streamed_donor(folder: Path, shape: DonorShape, seed: int) -> None:
    """A random fp16 donor written tensor by tensor (multi-GB donors never sit in memory)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(donor_config(shape), indent=2))
    for name, content in tokenizer_files(shape.vocab_size).items():
        (folder / name).write_text(json.dumps(content))
    rng = np.random.default_rng(seed)
    layouts = [TensorInfo(n, s, "F16") for n, s in donor_tensor_shapes(shape).items()]
    writer = ShardedWriter(folder, layouts)
    for layout in layouts:
        values = rng.standard_normal(layout.shape, dtype=np.float32)
        values = 1.0 + 0.1 * values if layout.name.endswith("norm.weight") else 0.05 * values
        writer.write(layout.name, memoryview(values.astype(np.float16).reshape(-1).view(np.uint8)))
    writer.close()


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


def warm(folders: list[Path]) -> None:
    """Read every weight file of ``folders`` once, into the page cache."""
    buffer = memoryview(bytearray(16 * 1024 * 1024))
    for folder in folders:
        for file in sorted(folder.glob("*.safetensors")):
            with file.open("rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass


def run_once(argv: list[str], out: Path, donors: list[Path]) -> Measurement:
    """One run of ``argv`` in a fresh runner process, donors cached and the page cache synced;
    ``out`` is removed before and after."""
    shutil.rmtree(out, ignore_errors=True)
    warm(donors)
    os.sync()
    result = subprocess.run([sys.executable, "-c", RUNNER, *argv], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report["code"] != 0:
        raise SystemExit(f"failed ({report['code']}): {' '.join(argv)}\n{result.stderr}")
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors")) if out.is_dir() else 0
    shutil.rmtree(out, ignore_errors=True)
    return Measurement(" ".join(argv), report["wall"], report["cpu"], report["rss"], size)


def measure(commands: dict[str, list[str]], out: Path, donors: list[Path], repeat: int) -> dict[str, Measurement]:
    """Best wall time and lowest peak RSS of ``repeat`` interleaved rounds of every command."""
    runs: dict[str, list[Measurement]] = {label: [] for label in commands}
    for _ in range(repeat):
        for label, argv in commands.items():
            runs[label].append(run_once(argv, out, donors))
    return {label: Measurement(label, min(r.wall for r in rs), min(r.cpu for r in rs), min(r.rss for r in rs),
                               rs[0].out_bytes)
            for label, rs in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "benchmarks" / "out", help="donor and output folder")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="donor size preset")
    parser.add_argument("--layers", type=int, help="override the preset's layer count")
    parser.add_argument("--repeat", type=int, default=2, help="runs per command; the best is reported")
    parser.add_argument("--no-mergekit", action="store_true", help="skip mergekit (not installed)")
    parser.add_argument("--recipes", nargs="+", choices=("passthrough", "slerp"), default=["passthrough", "slerp"],
                        help="which recipes to run (default both)")
    parser.add_argument("--clean", action="store_true", help="delete the donors afterwards")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run our merges from the merger_gui source tree in DIR, to compare")
    args = parser.parse_args()

    layers, hidden, intermediate, vocab = SIZES[args.size]
    layers = args.layers or layers
    shape = DonorShape(num_layers=layers, hidden_size=hidden, intermediate_size=intermediate,
                       num_heads=16, num_kv_heads=8, vocab_size=vocab)
    args.root.mkdir(parents=True, exist_ok=True)
    a, b = build_donors(args.root, shape)
    compileall.compile_dir(REPO / "merger_gui", quiet=1)
    bin_dir = Path(sys.executable).parent
    out = args.root / "out"
    commands = {"cp -r": ["cp", "-r", str(a), str(out)]}
    for name, text in recipes(a, b, layers).items():
        if name not in args.recipes:
            continue
        recipe = args.root / f"{name}.yml"
        recipe.write_text(text)
        commands[f"ours {name}"] = [str(bin_dir / "merger-gui"), "merge", str(recipe), str(out)]
        if args.baseline:
            commands[f"baseline {name}"] = ["env", f"PYTHONPATH={args.baseline.resolve()}",
                                            *commands[f"ours {name}"]]
        if not args.no_mergekit:
            commands[f"mergekit {name}"] = [str(bin_dir / "mergekit-yaml"), str(recipe), str(out),
                                            "--lazy-unpickle", "--allow-crimes", "--quiet"]
    load = os.getloadavg()[0]
    measured = measure(commands, out, [a, b], args.repeat)
    load = max(load, os.getloadavg()[0])
    copy = measured["cp -r"]
    donor_bytes = sum(f.stat().st_size for f in a.glob("*.safetensors"))
    if args.clean:
        for folder in (a, b):
            shutil.rmtree(folder)

    print(f"\n{args.size} donors: {donor_bytes / 1e9:.2f} GB each, {layers} layers, hidden {hidden}, "
          f"best of {args.repeat}, {os.cpu_count()} CPUs, load average up to {load:.1f}\n")
    print("| run | wall s | CPU s | peak RSS MB | MB/s | vs mergekit (time, RSS) | vs cp |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for label, m in measured.items():
        versus = ""
        theirs = measured.get(label.replace("ours", "mergekit")) if label.startswith("ours") else None
        if theirs is not None:
            versus = f"{theirs.wall / m.wall:.2f}x faster, {m.rss / theirs.rss:.2f} of the RSS"
        print(f"| {label} | {m.wall:.2f} | {m.cpu:.2f} | {m.rss / 1e6:.0f} | {m.out_bytes / 1e6 / m.wall:.0f} "
              f"| {versus} | {m.wall / copy.wall:.2f} |")


if __name__ == "__main__":
    main()
