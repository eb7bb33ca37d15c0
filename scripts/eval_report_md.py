#!/usr/bin/env python3
"""The "retrieval-quality" section of docs/benchmarks.md from scripts/eval-report's JSON files.
Usage: eval_report_md.py DATA_DIR MACHINE SECONDS BENCHMARKS_MD MODEL..."""
import json, os, sys
data, machine, secs, docs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
models = sys.argv[5:]
sts = json.load(open(f"{data}/sts.json"))
lines = ["## Retrieval and embedding quality", "",
         f"Written by `make eval` (`scripts/eval-report`) in one run of {secs} s on: {machine}.", "",
         f"**STS on the Lee corpus** (`ragd eval sts --lee`): {sts['pairs']} document pairs with averaged",
         "human similarity judgements (Lee, Pincombe & Welsh 2005, from gensim's wheel); the correlation",
         "of each model's cosine similarity with them. For scale: LSI reached r ≈ 0.6 in the paper.", "",
         "| model | Pearson r | Spearman ρ | texts truncated |", "|---|---:|---:|---:|"]
for m in sts["models"]:
    lines.append(f"| {m['model']} | {m['pearson']:.4f} | {m['spearman']:.4f} | {m['truncated']} of {m['texts']} |")
lines += ["", "**Retrieval on the State of the Union inverse-cloze set** (`ragd eval retrieval`; built by",
          "`scripts/make-ict-set`, which states the construction: a sentence taken out of its 6-sentence",
          "passage is the query, that passage the one relevant document). Chunks: 3 sentences, 1 shared;",
          "a document ranks by its best chunk. Measures with pytrec_eval's semantics (checked against it",
          "in the tests). p50: the client's latency per search, one at a time, through `ragd up`.", ""]
names = ["nDCG@10", "Recall@10", "Recall@100", "MRR@10", "MAP@100"]
for model in models:
    r = json.load(open(f"{data}/retrieval-{model}.json"))
    lines += [f"{model}: {r['documents']} passages ({r['points']} chunks), {r['queries']} queries.", "",
              "| mode | " + " | ".join(names) + " | p50 ms |", "|---|" + "---:|" * (len(names) + 1)]
    for m in r["modes"]:
        lines.append(f"| {m['mode']} | " + " | ".join(f"{m['metrics'][n]:.4f}" for n in names) + f" | {m['latency_ms_p50']:.1f} |")
    lines.append("")
body = "\n".join(lines)
print(body)
if os.environ.get("RAGD_EVAL_ONLY") != "print":
    text = open(docs).read()
    begin, end = "<!-- retrieval-quality:begin -->", "<!-- retrieval-quality:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    open(docs, "w").write(text)
