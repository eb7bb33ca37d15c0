#!/usr/bin/env python3
"""Make an int8 variant of a model exported by export_onnx.py, with ONNX Runtime's own
quantization tooling (onnxruntime.quantization.quantize_dynamic, PyPI onnxruntime).

Dynamic quantization: the weights of every MatMul whose second input is a constant (the
attention projections and the feed-forward layers) are stored as int8 with one scale per output
channel (symmetric); activations are quantized to uint8 at run time, per tensor. Embeddings,
LayerNorm, softmax and the attention products stay in float32. The output is the same graph
contract as the fp32 export (input_ids, attention_mask -> last_hidden_state), so the embedder's
tokenisation and pooling are unchanged.

model.json of the variant copies the fp32 entry with its own name, `precision: "int8"`,
`quantized_from`, the sha256 of its files, and `disabled_optimizers: ["SkipLayerNormFusion"]`:
on this graph ONNX Runtime 1.31's CPU SkipLayerNormalization kernel (which the fusion would put
after every quantized projection) made the whole model ~1.4x slower than plain Add +
LayerNormalization (measured: int8 MiniLM 251 vs 345 sentences/s, 32 x 64 tokens, 1 thread), at
the same accuracy. The embedder passes the list to ONNX Runtime's
`optimization.disable_specified_optimizers` session option.

Usage: quantize_onnx.py --src EXPORTED_DIR --out OUT_DIR --name NAME
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="a model directory written by export_onnx.py (model.json, model.onnx)")
    ap.add_argument("--out", required=True, help="output directory (model.onnx, tokenizer.json, model.json)")
    ap.add_argument("--name", required=True, help="model name served by ragd")
    args = ap.parse_args()

    # onnxruntime logs a "consider pre-processing" hint through the root logger; pre-processing
    # (symbolic shape inference) would need sympy and changes nothing for MatMul-only quantization.
    logging.disable(logging.WARNING)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = json.load(open(os.path.join(args.src, "model.json")))
    if src.get("precision", "fp32") != "fp32":
        raise SystemExit(f"{args.src} is already quantized ({src['precision']})")
    os.makedirs(args.out, exist_ok=True)
    out_model = os.path.join(args.out, "model.onnx")
    tmp = out_model + ".tmp"
    quantize_dynamic(
        os.path.join(args.src, src["model"]),
        tmp,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        # Only weight MatMuls: the attention products (activation x activation) stay float32.
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},
    )
    os.replace(tmp, out_model)
    shutil.copyfile(os.path.join(args.src, src["tokenizer"]), os.path.join(args.out, "tokenizer.json"))

    entry = dict(src)
    entry.update(
        name=args.name,
        model="model.onnx",
        tokenizer="tokenizer.json",
        precision="int8",
        quantized_from=src["name"],
        quantization="onnxruntime quantize_dynamic: int8 weights per output channel (symmetric), "
        "uint8 activations per tensor at run time, MatMul with constant weights only",
        disabled_optimizers=["SkipLayerNormFusion"],
        sha256={"model.onnx": sha256(out_model), "tokenizer.json": sha256(os.path.join(args.out, "tokenizer.json"))},
    )
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump(entry, f, indent=2)
    mb = lambda p: os.path.getsize(p) / 1e6  # noqa: E731
    print(
        f"quantized {src['name']} -> {args.name}: {mb(os.path.join(args.src, src['model'])):.1f} MB -> "
        f"{mb(out_model):.1f} MB ({args.out})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
