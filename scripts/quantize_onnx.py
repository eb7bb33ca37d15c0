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

`--keep-fp32 PREFIX` (repeatable) leaves the MatMuls whose weight's name starts with PREFIX in
fp32. scripts/setup keeps all-mpnet-base-v2's feed-forward down-projections (`ffn_out`) in fp32:
their input, after GELU, has outliers that one uint8 scale per tensor flattens. Measured on the
Lee corpus (Spearman against the human judgements) and 100 State of the Union queries over 300
passages (recall@10 agreement with fp32), raw ORT speed at batch 16 x 64 tokens, 2 threads:
every MatMul in int8 lost 3.0 % Spearman with 0.75 agreement (2.96x faster); with ffn_out in
fp32, -0.2 % (no loss) and 0.89 agreement, 1.83x faster. MiniLM loses nothing with every MatMul
in int8 (Spearman 0.5089 vs 0.5083 fp32, agreement 0.86, 2.2x), so it keeps none.

Usage: quantize_onnx.py --src EXPORTED_DIR --out OUT_DIR --name NAME [--keep-fp32 PREFIX ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_onnx import sha256  # noqa: E402  (the exporter's; one checksum for the manifest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="a model directory written by export_onnx.py (model.json, model.onnx)")
    ap.add_argument("--out", required=True, help="output directory (model.onnx, tokenizer.json, model.json)")
    ap.add_argument("--name", required=True, help="model name served by ragd")
    ap.add_argument("--keep-fp32", action="append", default=[], metavar="PREFIX",
                    help="leave MatMuls whose weight name starts with PREFIX in fp32 (repeatable)")
    args = ap.parse_args()

    # onnxruntime logs a "consider pre-processing" hint through the root logger; pre-processing
    # (symbolic shape inference) would need sympy and changes nothing for MatMul-only quantization.
    logging.disable(logging.WARNING)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import onnx

    src = json.load(open(os.path.join(args.src, "model.json")))
    if src.get("precision", "fp32") != "fp32":
        raise SystemExit(f"{args.src} is already quantized ({src['precision']})")
    graph = onnx.load(os.path.join(args.src, src["model"]), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    kept = [n.name for n in graph.node
            if n.op_type == "MatMul" and n.input[1] in weights and n.input[1].startswith(tuple(args.keep_fp32))]
    if args.keep_fp32 and not kept:
        raise SystemExit(f"--keep-fp32 {args.keep_fp32}: no MatMul weight has that prefix")
    os.makedirs(args.out, exist_ok=True)
    out_model = os.path.join(args.out, "model.onnx")
    tmp = out_model + ".tmp"
    quantize_dynamic(
        os.path.join(args.src, src["model"]),
        tmp,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=kept,
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
        "uint8 activations per tensor at run time, MatMul with constant weights only"
        + (f"; kept in fp32: {', '.join(args.keep_fp32)} ({len(kept)} MatMuls)" if kept else ""),
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
