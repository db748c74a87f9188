#!/usr/bin/env python3
"""Helpers for scripts/bench-embed (lore vs sentence-transformers on the same texts).

  bench_embed_st.py passages ARTICLES_DIR N OUT.jsonl   # stdlib only
      N passages of 150 words (~200 MiniLM tokens) from the Markdown articles, files in name
      order, windows starting every 50 words inside each article. The articles hold ~115k words,
      so non-overlapping windows would give only ~770; the overlap is what reaches 2,000.
      Deterministic, so every run (and both systems) embeds exactly the same texts.
  bench_embed_st.py st MODEL_DIR IN.jsonl OUT.json      # needs torch + sentence-transformers
      Encodes on CPU with 2 torch threads, batch 32, max_seq_length 256, normalised; times only
      encode() after one warm-up batch; writes {"count", "elapsed_s", "embeddings": first 20}.
  bench_embed_st.py compare ST.json LORE.json           # stdlib only
      Prints both throughputs, the ratio lore/ST and the min cosine over the first 20 vectors;
      exits 1 if that cosine is below 0.9999.
"""
import json
import math
import sys
import time
from pathlib import Path

WINDOW, STRIDE, CHECK = 150, 50, 20


def passages(articles: str, n: str, out: str) -> None:
    n, got = int(n), []
    for f in sorted(Path(articles).glob("*.md")):
        words = f.read_text(encoding="utf-8").split("\n", 1)[1].split()  # drop "# Title"
        for start in range(0, max(len(words) - WINDOW, 0) + 1, STRIDE):
            got.append(" ".join(words[start:start + WINDOW]))
    if len(got) < n:
        sys.exit(f"only {len(got)} passages available, {n} requested")
    with open(out, "w", encoding="utf-8") as fh:
        for p in got[:n]:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")


def st(model_dir: str, inp: str, out: str) -> None:
    import os
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep the report readable
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()

    torch.set_num_threads(2)  # the peer figure in PEERS.md is a 2-thread figure
    texts = [json.loads(l) for l in open(inp, encoding="utf-8") if l.strip()]
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 256
    kw = dict(batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    model.encode(texts[:32], **kw)  # warm-up: first-call allocations and kernel selection
    ntok = sum(min(len(ids), 256) for ids in model.tokenizer(texts)["input_ids"])
    t0 = time.perf_counter()
    emb = model.encode(texts, **kw)
    dt = time.perf_counter() - t0
    print(f"sentence-transformers: {len(texts)} texts in {dt:.2f} s = {len(texts) / dt:.1f} texts/s "
          f"({ntok / dt:.0f} tokens/s, {ntok / len(texts):.0f} tokens/text)")
    json.dump({"count": len(texts), "elapsed_s": dt, "embeddings": emb[:CHECK].tolist()}, open(out, "w"))


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def compare(st_json: str, lore_json: str) -> None:
    s = json.load(open(st_json))
    raw = open(lore_json, encoding="utf-8").read()
    try:
        lo = json.loads(raw)
    except json.JSONDecodeError:
        sys.exit(f"lore output is not JSON: {lore_json} (first bytes: {raw[:200]!r})")
    for k in ("count", "elapsed_s", "embeddings"):
        if k not in lo:
            sys.exit(f"lore JSON lacks field {k!r} (has {sorted(lo)})")
    if lo["count"] != s["count"]:
        sys.exit(f"lore embedded {lo['count']} texts, sentence-transformers {s['count']}")
    st_rate, lore_rate = s["count"] / s["elapsed_s"], lo["count"] / lo["elapsed_s"]
    cos = min(cosine(a, b) for a, b in zip(s["embeddings"], lo["embeddings"][:CHECK]))
    print(f"lore:                  {lo['count']} texts in {lo['elapsed_s']:.2f} s = {lore_rate:.1f} texts/s")
    print(f"ratio lore/ST:         {lore_rate / st_rate:.2f}x")
    print(f"min cosine (first {CHECK}): {cos:.6f}")
    if cos < 0.9999:
        sys.exit("FAIL: lore's vectors differ from sentence-transformers' (cosine < 0.9999)")


if __name__ == "__main__":
    cmds = {"passages": passages, "st": st, "compare": compare}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])
