"""faiss-cpu baseline for benches/benches/exact.rs: IndexFlatIP, or a scalar-quantised index
(SQfp16, SQbf16, SQ8) built by faiss.index_factory with inner product.

Reads the same raw little-endian f32 files the Rust bench wrote and prints JSON
{"version": ..., "threads": ..., "qps": {"<batch>": queries_per_second}, "ids": [[...]]}
(ids: top-10 of the first 100 queries).
Usage: faiss_flat.py DATA QUERIES DIM BATCHES SECS [FACTORY]   (FACTORY defaults to Flat)
"""
import json
import sys
import time

import faiss
import numpy as np

data_path, queries_path, dim, batches, secs = sys.argv[1:6]
dim, secs = int(dim), float(secs)
xb = np.fromfile(data_path, dtype=np.float32).reshape(-1, dim)
xq = np.fromfile(queries_path, dtype=np.float32).reshape(-1, dim)
factory = sys.argv[6] if len(sys.argv) > 6 else "Flat"
index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
if not index.is_trained:
    index.train(xb)
index.add(xb)
out = {"version": faiss.__version__, "threads": faiss.omp_get_max_threads(), "qps": {}}
_, ids = index.search(xq[:100], 10)
out["ids"] = ids.tolist()
for b in [int(x) for x in batches.split(",")]:
    index.search(xq[:b], 10)  # warm-up
    n, t0, i = 0, time.perf_counter(), 0
    while True:
        start = (i * b) % (len(xq) - b + 1)
        index.search(xq[start:start + b], 10)
        n += b
        i += 1
        if time.perf_counter() - t0 >= secs and i >= 3:
            break
    out["qps"][str(b)] = n / (time.perf_counter() - t0)
print(json.dumps(out))
