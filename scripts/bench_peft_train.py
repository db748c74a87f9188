#!/usr/bin/env python3
"""The peer's LoRA training speed on CPU: transformers + peft, the setup of shared/PEERS.md.

LoRA r 16, alpha 32, dropout 0.05 on the 7 projections (q k v o gate up down), fp32, AdamW
lr 2e-4, batches of 4 x 256 tokens, every token trained (labels = input_ids). A plain torch loop
(model.train(), loss.backward(), optimizer.step(), zero_grad), seeded, with torch's thread count
set. The first --warmup-steps steps are run but not timed.

Data: JSONL, one {"text": ...} per row. Each text is tokenized with the model's tokenizer (no
special tokens), the EOS id appended, truncated to --seq-len; only rows that reach exactly
--seq-len tokens are kept, so every batch is full. Batches cycle through the kept rows in order.

Prints one JSON line: tokens_per_s (trained tokens per second over the timed steps), s_per_step,
peak_rss_mb, steps, losses, and the torch / peft / transformers versions.

Usage:
  /work/venv-peft/bin/python scripts/bench_peft_train.py --model HF_DIR --data rows.jsonl \
      [--seq-len 256] [--batch-size 4] [--steps 6] [--warmup-steps 1] [--threads 2]
Measure on a quiet machine (see PEERS.md): a busy second core makes the figure meaningless.
"""
import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_tokenizer(model_dir):
    """(encode(text) -> ids without special tokens, eos id)."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        eos = tok.eos_token_id
        enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    except Exception as e:  # noqa: BLE001
        print(f"note: AutoTokenizer failed ({e}); using tokenizers directly", file=sys.stderr)
        from tokenizers import Tokenizer

        tk = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        enc = lambda t: tk.encode(t, add_special_tokens=False).ids  # noqa: E731
        eos = None
    if eos is None:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        eos = cfg.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0]
    if eos is None:
        sys.exit("the model names no EOS token (tokenizer_config.json / config.json)")
    return enc, int(eos)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face float folder (e.g. lore's export)")
    ap.add_argument("--data", required=True, help='JSONL, each row with a "text" field')
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6, help="timed steps")
    ap.add_argument("--warmup-steps", type=int, default=1, help="untimed steps run first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    enc, eos = load_tokenizer(args.model)
    rows, n_rows = [], 0
    with open(args.data, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            n_rows += 1
            ids = (list(enc(json.loads(line)["text"])) + [eos])[: args.seq_len]
            if len(ids) == args.seq_len:
                rows.append(ids)
    if len(rows) < args.batch_size:
        sys.exit(f"only {len(rows)} of {n_rows} rows reach {args.seq_len} tokens; "
                 f"need at least --batch-size {args.batch_size}")

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kw = {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}
    model = AutoModelForCausalLM.from_pretrained(str(args.model), **kw)
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(TARGETS),
                     bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    n_batches = len(rows) // args.batch_size
    losses, times = [], []
    total = args.warmup_steps + args.steps
    for step in range(total):
        b = step % n_batches
        x = torch.tensor(rows[b * args.batch_size:(b + 1) * args.batch_size], dtype=torch.long)
        t0 = time.perf_counter()
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step >= args.warmup_steps:
            times.append(dt)
        losses.append(round(out.loss.item(), 5))
        print(f"step {step + 1}/{total}{' (warmup)' if step < args.warmup_steps else ''}: "
              f"loss {out.loss.item():.4f}, {dt:.2f} s", file=sys.stderr, flush=True)

    timed = sum(times)
    # Every position is a label, but the causal LM loss shifts by one: seq_len - 1 predicted
    # tokens per row. The "trained tokens" figure counts the tokens fed (batch x seq_len), as
    # PEERS.md does; the predicted-token rate is given too.
    tokens = args.batch_size * args.seq_len * len(times)
    print(json.dumps({
        "tokens_per_s": tokens / timed if timed else None,
        "predicted_tokens_per_s": args.batch_size * (args.seq_len - 1) * len(times) / timed if timed else None,
        "s_per_step": timed / len(times) if times else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps": len(times),
        "warmup_steps": args.warmup_steps,
        "losses": losses,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "threads": args.threads,
        "rows_kept": len(rows),
        "rows_read": n_rows,
        "trainable_params": trainable,
        "loadavg_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
    }))


if __name__ == "__main__":
    main()
