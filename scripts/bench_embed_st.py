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
  bench_embed_st.py ort MODEL_DIR IN.jsonl OUT_DIR      # needs torch, onnx, onnxruntime
      ONNX Runtime, what fastembed runs: exports the same transformer once with
      torch.onnx.export (opset 17, dynamic batch and length), then also the graph after
      onnxruntime.transformers.optimizer (model_type bert, the fused attention/GELU/LayerNorm).
      Each runs with 2 intra-op threads on the same tokens (truncation 256, batch 32, padded to
      the batch's longest), mean pooling and L2 normalisation outside the graph as lore does;
      times only the batches after one warm-up batch. Writes OUT_DIR/ort-plain.json and
      OUT_DIR/ort-fused.json in the st format.
  bench_embed_st.py compare ST.json LORE.json [PEER.json…]   # stdlib only
      Prints every throughput, the ratio lore/peer for each and the min cosine over the first
      20 vectors against the first peer; exits 1 if that cosine is below 0.9999.
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


def ort(model_dir: str, inp: str, out_dir: str) -> None:
    import os
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import numpy as np
    import onnxruntime as rt
    import torch
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel, AutoTokenizer

    out = Path(out_dir)
    texts = [json.loads(l) for l in open(inp, encoding="utf-8") if l.strip()]
    tok = AutoTokenizer.from_pretrained(model_dir)
    plain, fused = out / "model.onnx", out / "model-fused.onnx"
    model = AutoModel.from_pretrained(model_dir).eval()

    class Hidden(torch.nn.Module):  # named inputs, whatever order forward() takes them in
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    dummy = tok(["an example"], return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(Hidden(model), tuple(dummy[n] for n in names), str(plain), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    cfg = model.config
    optimizer.optimize_model(str(plain), model_type="bert", num_heads=cfg.num_attention_heads,
                             hidden_size=cfg.hidden_size).save_model_to_file(str(fused))
    batches = []
    for i in range(0, len(texts), 32):
        enc = tok(texts[i:i + 32], padding="longest", truncation=True, max_length=256, return_tensors="np")
        batches.append({n: enc[n].astype(np.int64) for n in names})
    ntok = sum(int(b["attention_mask"].sum()) for b in batches)
    for label, path in (("plain", plain), ("fused", fused)):
        opts = rt.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
        sess = rt.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        run = lambda b: sess.run(["last_hidden_state"], b)[0]
        run(batches[0])  # warm-up
        t0, first = time.perf_counter(), []
        for b in batches:
            hidden, mask = run(b), b["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            if len(first) < CHECK:
                first.extend(pooled[:CHECK - len(first)].tolist())
        dt = time.perf_counter() - t0
        print(f"onnxruntime {rt.__version__} ({label}): {len(texts)} texts in {dt:.2f} s = "
              f"{len(texts) / dt:.1f} texts/s ({ntok / dt:.0f} tokens/s)")
        json.dump({"count": len(texts), "elapsed_s": dt, "embeddings": first, "name": f"ORT {label}"},
                  open(out / f"ort-{label}.json", "w"))


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def compare(st_json: str, lore_json: str, *others: str) -> None:
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
    for path in others:
        o = json.load(open(path))
        rate = o["count"] / o["elapsed_s"]
        ocos = min(cosine(a, b) for a, b in zip(o["embeddings"], lo["embeddings"][:CHECK]))
        print(f"ratio lore/{o['name']}: {lore_rate / rate:.2f}x  ({rate:.1f} texts/s; min cosine vs lore {ocos:.6f})")
    print(f"min cosine (first {CHECK}): {cos:.6f}")
    if cos < 0.9999:
        sys.exit("FAIL: lore's vectors differ from sentence-transformers' (cosine < 0.9999)")


if __name__ == "__main__":
    cmds = {"passages": passages, "st": st, "ort": ort, "compare": compare}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])
