"""Wall time, CPU time and peak RSS of ``merger-gui analyze A B --no-activations`` (weight similarity).

Reuses the two random fp16 donors of ``benchmarks/bench_merge.py`` (``--size small``: 24 layers,
hidden 1024, ~700 MB each; built once under ``--root``, default ``benchmarks/out/``). Each run is
a whole process in a fresh runner that reports its child's wall and CPU time and peak RSS; the
donors are read once first so every run finds them in the page cache. The best of ``--repeat``
runs is printed as a markdown row, with the donors' combined size, to show that peak RSS stays
near the interpreter's and torch's own, whatever the donors' size.

    .venv/bin/python benchmarks/bench_layer_similarity.py [--size small|large] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_merge import RUNNER, SIZES, build_donors, warm  # noqa: E402

from merger_gui.core.synthetic import DonorShape  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--root", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    layers, hidden, intermediate, vocab = SIZES[args.size]
    shape = DonorShape(num_layers=layers, hidden_size=hidden, intermediate_size=intermediate,
                       num_heads=16, num_kv_heads=8, vocab_size=vocab)  # bench_merge's, so its donors are reused
    args.root.mkdir(parents=True, exist_ok=True)
    a, b = build_donors(args.root, shape)
    size = sum(f.stat().st_size for d in (a, b) for f in d.glob("*.safetensors"))
    command = [sys.executable, "-m", "merger_gui", "analyze", str(a), str(b), "--no-activations", "--json"]
    runs = []
    for _ in range(args.repeat):
        warm([a, b])
        out = subprocess.run([sys.executable, "-c", RUNNER, *command], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout))
        if runs[-1]["code"]:
            raise SystemExit(f"analyze failed with status {runs[-1]['code']}")
    print("| donors | layers | wall | CPU | peak RSS |")
    print("|---|---|---|---|---|")
    print(f"| 2 × {size / 2 / 2**20:.0f} MiB | {layers} × {layers} | {min(r['wall'] for r in runs):.2f} s | "
          f"{min(r['cpu'] for r in runs):.2f} s | {min(r['rss'] for r in runs) / 2**20:.0f} MiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
