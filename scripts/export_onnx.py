#!/usr/bin/env python3
"""Export a sentence-transformers model (BERT or MPNet encoder) from safetensors to ONNX.

numpy + onnx only: no torch. The graph reproduces the Hugging Face encoder exactly:

    inputs  input_ids [batch, seq] int64, attention_mask [batch, seq] int64
    output  last_hidden_state [batch, seq, hidden] float32

Pooling (mean / CLS) and L2 normalisation are done by the ragd embedder, so one exported model
serves normalised and raw requests. Besides model.onnx the exporter copies tokenizer.json and
writes model.json, this model's entry of the ragd models manifest (name, dim, max_seq_len,
pooling, normalize, prefixes, pad id, sha256 of the files).

Usage: export_onnx.py --src MODEL_DIR --out OUT_DIR --name NAME [--query-prefix P] [--passage-prefix P]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a .safetensors file with numpy (header: u64 length + JSON; then raw little-endian data)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = arr.astype(np.float32) if arr.dtype == np.float16 else arr
    return tensors


def strip_prefix(weights: dict[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
    """Checkpoints saved from *ForMaskedLM / *Model carry a `bert.` / `mpnet.` prefix, or none."""
    prefix = model_type + "."
    if any(k.startswith(prefix) for k in weights):
        return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    return weights


class Graph:
    """A small builder over onnx.helper that names nodes and initializers uniquely."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out + "_node", **attrs))
        return out

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, hint: str) -> str:
        # torch Linear: y = x @ W^T + b; store W^T so MatMul needs no transpose at run time.
        w = self.const(np.ascontiguousarray(weight.T), hint + "_w")
        b = self.const(bias, hint + "_b")
        return self.op("Add", [self.op("MatMul", [x, w]), b], hint)

    def layer_norm(self, x: str, gamma: np.ndarray, beta: np.ndarray, eps: float, hint: str) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.const(gamma, hint + "_g"), self.const(beta, hint + "_b")],
            hint,
            axis=-1,
            epsilon=eps,
        )

    def gelu(self, x: str) -> str:
        # Exact (erf) GELU as in transformers' "gelu": x * 0.5 * (1 + erf(x / sqrt(2))).
        scaled = self.op("Div", [x, self.const(np.array(math.sqrt(2.0), np.float32))])
        one_plus = self.op("Add", [self.op("Erf", [scaled]), self.const(np.array(1.0, np.float32))])
        return self.op("Mul", [self.op("Mul", [x, self.const(np.array(0.5, np.float32))]), one_plus])


def attention(g: Graph, x: str, p: dict[str, np.ndarray], names: dict[str, str], heads: int,
              hidden: int, mask_add: str, bias: str | None) -> str:
    """Multi-head self-attention; `names` maps q/k/v/o to weight-name prefixes."""
    hd = hidden // heads
    shape = g.const(np.array([0, 0, heads, hd], np.int64), "heads_shape")

    def project(which: str, perm: list[int]) -> str:
        y = g.linear(x, p[names[which] + ".weight"], p[names[which] + ".bias"], which)
        return g.op("Transpose", [g.op("Reshape", [y, shape])], perm=perm)

    q = project("q", [0, 2, 1, 3])  # [B, h, S, d]
    k = project("k", [0, 2, 3, 1])  # [B, h, d, S]
    v = project("v", [0, 2, 1, 3])  # [B, h, S, d]
    scores = g.op("Div", [g.op("MatMul", [q, k]), g.const(np.array(math.sqrt(hd), np.float32))])
    if bias is not None:
        scores = g.op("Add", [scores, bias])
    scores = g.op("Add", [scores, mask_add])
    probs = g.op("Softmax", [scores], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const(np.array([0, 0, hidden], np.int64), "hidden_shape")])
    return g.linear(ctx, p[names["o"] + ".weight"], p[names["o"] + ".bias"], "attn_out")


def extended_mask(g: Graph, attention_mask: str) -> str:
    """(1 - mask) * finfo(float32).min, shaped [B, 1, 1, S], as transformers' extended mask."""
    m = g.op("Cast", [attention_mask], to=TensorProto.FLOAT)
    inv = g.op("Sub", [g.const(np.array(1.0, np.float32)), m])
    add = g.op("Mul", [inv, g.const(np.array(np.finfo(np.float32).min, np.float32))])
    return g.op("Unsqueeze", [add, g.const(np.array([1, 2], np.int64))], "mask_add")


def relative_position_buckets(n: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """MPNet's bidirectional relative position buckets for an n x n attention map, in float32 like torch."""
    ctx = np.arange(n, dtype=np.int64)[:, None]
    mem = np.arange(n, dtype=np.int64)[None, :]
    rel = mem - ctx
    ret = np.zeros_like(rel)
    m = -rel
    nb = num_buckets // 2
    ret += (m < 0).astype(np.int64) * nb
    m = np.abs(m)
    max_exact = nb // 2
    is_small = m < max_exact
    with np.errstate(divide="ignore"):
        ratio = m.astype(np.float32) / np.float32(max_exact)
        large = np.log(ratio) / np.float32(math.log(max_distance / max_exact)) * np.float32(nb - max_exact)
    large = max_exact + np.where(is_small, 0, large).astype(np.int64)
    large = np.minimum(large, nb - 1)
    ret += np.where(is_small, m, large)
    return ret


def build(src: str, out_path: str) -> dict:
    cfg = json.load(open(os.path.join(src, "config.json")))
    model_type = cfg["model_type"]
    if model_type not in ("bert", "mpnet"):
        raise SystemExit(f"unsupported model_type {model_type!r}: expected 'bert' or 'mpnet'")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise SystemExit(f"unsupported hidden_act {cfg['hidden_act']!r}: expected 'gelu'")
    p = strip_prefix(read_safetensors(os.path.join(src, "model.safetensors")), model_type)
    hidden, heads, layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    eps = float(cfg["layer_norm_eps"])

    g = Graph()
    input_ids, attention_mask = "input_ids", "attention_mask"
    words = g.op("Gather", [g.const(p["embeddings.word_embeddings.weight"], "word_emb"), input_ids])
    mask_add = extended_mask(g, attention_mask)
    bias = None
    pos_table = p["embeddings.position_embeddings.weight"]
    if model_type == "bert":
        seq = g.op("Shape", [input_ids], start=1, end=2)
        pos = g.op("Slice", [g.const(pos_table, "pos_emb"), g.const(np.array([0], np.int64)), seq,
                             g.const(np.array([0], np.int64))])
        token_type = p["embeddings.token_type_embeddings.weight"][0]  # single-segment inputs
        emb = g.op("Add", [g.op("Add", [words, pos]), g.const(token_type, "type_emb")])
        names = {"q": "attention.self.query", "k": "attention.self.key",
                 "v": "attention.self.value", "o": "attention.output.dense"}
        attn_ln = "attention.output.LayerNorm"
    else:
        # position ids = padding_idx + cumsum(input_ids != padding_idx), padding keeps padding_idx.
        pad = cfg.get("pad_token_id", 1)
        not_pad = g.op("Cast", [g.op("Not", [g.op("Equal", [input_ids, g.const(np.array(pad, np.int64))])])],
                       to=TensorProto.INT64)
        cums = g.op("CumSum", [not_pad, g.const(np.array(1, np.int64))])
        pos_ids = g.op("Add", [g.op("Mul", [cums, not_pad]), g.const(np.array(pad, np.int64))])
        emb = g.op("Add", [words, g.op("Gather", [g.const(pos_table, "pos_emb"), pos_ids])])
        # Relative position bias shared by every layer: buckets precomputed for the longest input.
        seq = g.op("Shape", [input_ids], start=1, end=2)
        seq2 = g.op("Concat", [seq, seq], axis=0)
        buckets = g.const(relative_position_buckets(pos_table.shape[0]), "rel_buckets")
        bsl = g.op("Slice", [buckets, g.const(np.array([0, 0], np.int64)), seq2,
                             g.const(np.array([0, 1], np.int64))])
        rel = g.op("Gather", [g.const(p["encoder.relative_attention_bias.weight"], "rel_bias"), bsl])
        bias = g.op("Unsqueeze", [g.op("Transpose", [rel], perm=[2, 0, 1]), g.const(np.array([0], np.int64))],
                    "position_bias")
        names = {"q": "attention.attn.q", "k": "attention.attn.k",
                 "v": "attention.attn.v", "o": "attention.attn.o"}
        attn_ln = "attention.LayerNorm"
    x = g.layer_norm(emb, p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"], eps, "emb_ln")

    for i in range(layers):
        lp = {k[len(f"encoder.layer.{i}."):]: v for k, v in p.items() if k.startswith(f"encoder.layer.{i}.")}
        a = attention(g, x, lp, names, heads, hidden, mask_add, bias)
        x = g.layer_norm(g.op("Add", [a, x]), lp[attn_ln + ".weight"], lp[attn_ln + ".bias"], eps, "attn_ln")
        h = g.gelu(g.linear(x, lp["intermediate.dense.weight"], lp["intermediate.dense.bias"], "ffn_in"))
        o = g.linear(h, lp["output.dense.weight"], lp["output.dense.bias"], "ffn_out")
        x = g.layer_norm(g.op("Add", [o, x]), lp["output.LayerNorm.weight"], lp["output.LayerNorm.bias"], eps,
                         "ffn_ln")
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))

    graph = helper.make_graph(
        g.nodes,
        f"ragd-{model_type}-encoder",
        [helper.make_tensor_value_info(input_ids, TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info(attention_mask, TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="ragd-export-onnx")
    model.ir_version = 8
    onnx.checker.check_model(model)
    if os.path.exists(out_path):
        os.remove(out_path)
    onnx.save(model, out_path)
    return {"model_type": model_type, "dim": hidden, "pad_id": int(cfg.get("pad_token_id", 0)),
            "max_position_embeddings": int(cfg["max_position_embeddings"])}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="sentence-transformers model directory")
    ap.add_argument("--out", required=True, help="output directory (model.onnx, tokenizer.json, model.json)")
    ap.add_argument("--name", required=True, help="model name served by ragd")
    ap.add_argument("--query-prefix", default="")
    ap.add_argument("--passage-prefix", default="")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    info = build(args.src, os.path.join(args.out, "model.onnx"))
    shutil.copyfile(os.path.join(args.src, "tokenizer.json"), os.path.join(args.out, "tokenizer.json"))

    st = json.load(open(os.path.join(args.src, "sentence_bert_config.json")))
    pooling_cfg = json.load(open(os.path.join(args.src, "1_Pooling", "config.json")))
    modules = json.load(open(os.path.join(args.src, "modules.json")))
    if pooling_cfg.get("pooling_mode_mean_tokens"):
        pooling = "mean"
    elif pooling_cfg.get("pooling_mode_cls_token"):
        pooling = "cls"
    else:
        raise SystemExit(f"unsupported pooling {pooling_cfg}: expected mean or cls tokens")
    entry = {
        "name": args.name,
        "model": "model.onnx",
        "tokenizer": "tokenizer.json",
        "dim": info["dim"],
        "max_seq_len": int(st["max_seq_length"]),
        "pooling": pooling,
        "normalize": any(m["type"].endswith("Normalize") for m in modules),
        "pad_id": info["pad_id"],
        "query_prefix": args.query_prefix,
        "passage_prefix": args.passage_prefix,
        "source": info["model_type"],
        "sha256": {
            "model.onnx": sha256(os.path.join(args.out, "model.onnx")),
            "tokenizer.json": sha256(os.path.join(args.out, "tokenizer.json")),
        },
    }
    if entry["max_seq_len"] > info["max_position_embeddings"]:
        raise SystemExit("max_seq_length exceeds the model's position embeddings")
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump(entry, f, indent=2)
    print(f"exported {args.name}: {entry['dim']}-d, max_seq_len {entry['max_seq_len']}, {pooling} pooling "
          f"-> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
