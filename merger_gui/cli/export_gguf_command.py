"""``merger-gui export-gguf``: a model folder to one GGUF file, with a progress bar on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from merger_gui.core.errors import UserError
from merger_gui.core.quantization import GGUF_EXPORT_TYPES
from merger_gui.core.units import format_size

from .terminal import StatusLine, cancelled_how, cancelling_signals, interrupting_signal


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-gguf",
        help="write a model folder (a merge's output) as one GGUF file for llama.cpp, Ollama, LM Studio",
        description="Export MODEL_DIR (Llama, Mistral, Qwen2, Gemma or Phi-3 with a SentencePiece or "
                    "byte-level BPE tokenizer) to OUT.gguf. The file appears only when complete; Ctrl-C, "
                    "SIGTERM and SIGHUP cancel and leave nothing behind. Missing folders above OUT.gguf "
                    "are created, as merge creates OUT_DIR's (and removed again if the export fails); an "
                    "OUT.gguf that is a link is replaced by the file, never written through. For K-quants "
                    "(Q4_K_M…) quantise the f16 file further with llama.cpp: llama-quantize OUT.gguf "
                    "OUT-Q4_K_M.gguf Q4_K_M. "
                    "Exit status: 0 on success, 1 on an error, 2 on a usage error, 128 + the signal's "
                    "number when cancelled.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder: config.json, weights, tokenizer")
    parser.add_argument("out_file", metavar="OUT.gguf", help="GGUF file to create")
    parser.add_argument("--type", dest="export_type", choices=tuple(GGUF_EXPORT_TYPES), default="f16",
                        help="tensor type of the matrices (norms and biases stay f32); default f16")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.gguf once the new file is complete")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from merger_gui.engine.gguf_export import ExportDone, ExportProgress, export_gguf  # gguf-py only here

    status = StatusLine(sys.stderr)
    events = export_gguf(args.model_dir, args.out_file, args.export_type, overwrite=args.overwrite)
    done = None
    try:
        with cancelling_signals():
            for event in events:
                if isinstance(event, ExportProgress):
                    status.bar(event.bytes_written, event.total_bytes,
                               f"{event.index}/{event.count} tensors · GGUF {args.export_type}", event.eta)
                elif isinstance(event, ExportDone):
                    done = event
    except KeyboardInterrupt as stop:
        events.close()  # the engine removes its partial file
        status.clear()
        signum = interrupting_signal(stop)
        print(f"{cancelled_how(signum)}: nothing was written", file=sys.stderr)
        return 128 + signum
    except UserError:
        status.clear()
        raise
    status.clear()
    assert done is not None  # the engine's last event
    if args.json:
        print(json.dumps({"path": str(done.path), "type": args.export_type, "tensors": done.tensors,
                          "tensor_bytes": done.tensor_bytes, "file_bytes": done.file_bytes,
                          "seconds": round(done.seconds, 3)}, indent=2))
    else:
        print(f"wrote {done.tensors} tensors ({format_size(done.tensor_bytes, 2)} of tensor data, "
              f"{format_size(done.file_bytes, 2)} file) to {Path(done.path)}")
    return 0
