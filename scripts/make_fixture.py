#!/usr/bin/env python3
"""Make the reference-vector fixture of a model with sentence-transformers itself.

Run once, outside CI, in a Python environment with sentence-transformers (torch) installed; the
fixture is committed under tests/fixtures/ and the embedder's correctness test compares its
vectors against it (max abs difference <= 1e-5).

Usage: make_fixture.py --model-dir DIR --name NAME --out tests/fixtures/NAME.json [--check-onnx model.onnx]
"""

from __future__ import annotations

import argparse
import json
import sys

LONG = " ".join(
    f"Sentence number {i} talks about vector search, retrieval augmented generation and shards."
    for i in range(60)
)

TEXTS = [
    "The capital of Germany is Berlin.",
    "What is the capital of Germany?",
    "",
    "   ",
    "\t\n  leading and trailing whitespace \n\t",
    "a",
    "Hello, world!",
    "Vector databases store embeddings for nearest-neighbour search.",
    "Straße, café, naïve, façade, Ångström — accents and dashes.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "القاهرة هي عاصمة مصر",
    "Emoji 🚀🔥 and symbols ∑ ∫ ≠ ≤ © ®",
    "fn main() { println!(\"{}\", 1 + 2); } // code",
    "3.14159 26535 89793 23846 — numbers 42, 1e-9, 0xFF",
    "ALL CAPS SHOUTING AND MiXeD cAsE",
    "repeated repeated repeated repeated repeated repeated",
    "Question: how do HNSW graphs trade recall for latency?",
    "The quick brown fox jumps over the lazy dog.",
    "Multi\nline\ntext\nwith\nnewlines",
    "tabs\tbetween\twords",
    "Zero\u200bwidth\u200bspaces and non\u00a0breaking spaces",
    LONG,
    LONG + " " + LONG,
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--check-onnx", help="also run an exported model.onnx with Python onnxruntime and compare")
    args = ap.parse_args()

    import numpy as np
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model_dir, device="cpu")
    vectors = model.encode(TEXTS, batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
    tok = model.tokenizer
    max_len = model.max_seq_length
    full = [len(tok(t, add_special_tokens=True)["input_ids"]) for t in TEXTS]
    used = [min(n, max_len) for n in full]

    if args.check_onnx:
        import onnxruntime as ort

        sess = ort.InferenceSession(args.check_onnx, providers=["CPUExecutionProvider"])
        enc = tok(TEXTS, padding=True, truncation=True, max_length=max_len, return_tensors="np")
        hidden = sess.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                 "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
        mask = enc["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        diff = float(np.abs(pooled - vectors).max())
        print(f"onnx vs sentence-transformers: max abs diff {diff:.3e}", file=sys.stderr)
        if diff > 1e-5:
            return 1

    fixture = {
        "model": args.name,
        "generator": f"sentence-transformers {sentence_transformers.__version__}, "
                     "SentenceTransformer.encode (model's own Normalize module), CPU, float32",
        "max_seq_len": max_len,
        "cases": [
            {"text": t, "tokens": u, "untruncated_tokens": f, "truncated": f > max_len,
             "vector": [float(f"{x:.9g}") for x in v.tolist()]}
            for t, u, f, v in zip(TEXTS, used, full, vectors)
        ],
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(TEXTS)} reference vectors to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
