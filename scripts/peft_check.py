#!/usr/bin/env python3
"""Prove lore's LoRA adapters are valid PEFT adapters, both ways.

Runs with the venv that holds torch + transformers + peft (e.g. /work/venv-peft/bin/python);
never part of the Rust tests.

  (a) lore -> PEFT: load the float export with transformers (f32, CPU), apply lore's adapter with
      `PeftModel.from_pretrained`, and compare per-token logprobs and the last position's logits
      with `lore finetune score --base EXPORT --adapter LORE_ADAPTER --weights native --json` on
      the same text (same token ids: the text is tokenized without special tokens on both sides,
      and the ids lore reports are checked). The base without an adapter is compared too, and the
      adapter's own effect (base vs base+adapter) must dwarf the lore-vs-PEFT difference.
  (b) PEFT -> lore: make a PEFT LoRA on the export (r 8, alpha 16, the 7 projections,
      init_lora_weights=False so B is nonzero, fixed seed), save it with `save_pretrained` to
      WORK/peft_adapter and compare `lore finetune score --adapter WORK/peft_adapter` the same way.
  (c) lore's adapter folder loads in PEFT with no missing/unexpected-key warnings, and loading it
      by hand (`set_peft_model_state_dict`) reports no unexpected keys and no missing LoRA keys;
      its config and tensor shapes are what PEFT expects.
  optional: --merged-export DIR (made by `lore finetune export --adapter`) is compared tensor by
      tensor with PEFT's `merge_and_unload()` of the same adapter.

Exits non-zero with a message when a figure is past its tolerance or a check fails; prints every
figure either way, and a final JSON summary line.

Usage:
  LORE_BIN=target/release/lore /work/venv-peft/bin/python scripts/peft_check.py \
      --base-export EXPORT_DIR --lore-adapter ADAPTER_DIR --work WORK_DIR \
      [--merged-export MERGED_DIR] [--tol-logprobs 1e-3] [--tol-logits 1e-2] [--skip-lore]
"""
import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

DEFAULT_TEXT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France? Answer briefly.<|im_end|>\n"
    "<|im_start|>assistant\nParis. It has been the capital since 987, and about 2.1 million "
    "people live there.<|im_end|>\n"
)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- model side (transformers)

def load_tokenizer_ids(export, text):
    """Token ids of `text` with the export's tokenizer, no special tokens added."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(Path(export) / "tokenizer.json"))
    ids = tk.encode(text, add_special_tokens=False).ids
    # Cross-check with transformers' own loading of the folder when it works.
    try:
        from transformers import AutoTokenizer

        at = AutoTokenizer.from_pretrained(str(export))
        ids2 = at(text, add_special_tokens=False)["input_ids"]
        if list(ids2) != list(ids):
            log(f"warning: AutoTokenizer and tokenizers disagree on the text ({len(ids2)} vs {len(ids)} ids)")
    except Exception as e:  # noqa: BLE001
        log(f"note: AutoTokenizer could not load {export}: {e}")
    return ids


def load_base(export):
    import transformers
    from transformers import AutoModelForCausalLM

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kw = {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}
    model = AutoModelForCausalLM.from_pretrained(str(export), attn_implementation="eager", **kw)
    model.eval()
    return model


@torch.no_grad()
def score(model, ids):
    """(logprobs of ids[1:], last-position logits) as float64 CPU tensors."""
    x = torch.tensor([ids], dtype=torch.long)
    logits = model(input_ids=x).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    tgt = torch.tensor(ids[1:], dtype=torch.long)
    logprobs = lp[:-1].gather(1, tgt[:, None])[:, 0]
    return logprobs, logits[-1]


# ---------------------------------------------------------------- lore side

def lore_score(lore_bin, export, adapter, text):
    cmd = [lore_bin, "finetune", "score", "--base", str(export)]
    if adapter is not None:
        cmd += ["--adapter", str(adapter)]
    cmd += ["--weights", "native", "--text", text, "--json"]
    log("$ " + " ".join(shlex.quote(c) for c in cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        fail(f"lore binary not found at {lore_bin!r} (set LORE_BIN or --lore-bin)", code=3)
    if p.returncode != 0:
        fail(f"`lore finetune score` exited {p.returncode}:\n{p.stderr.strip()[-3000:]}", code=3)
    out = p.stdout.strip()
    try:
        obj = json.loads(out)
    except json.JSONDecodeError:
        obj = None
        for line in reversed(out.splitlines()):
            if line.lstrip().startswith("{"):
                try:
                    obj = json.loads(line)
                    break
                except json.JSONDecodeError:
                    pass
        if obj is None:
            fail(f"`lore finetune score --json` printed no JSON object:\n{out[-2000:]}", code=3)
    for k in ("tokens", "logprobs", "last_logits"):
        if k not in obj:
            fail(f"lore's JSON lacks `{k}` (keys: {sorted(obj)})", code=3)
    return obj


# ---------------------------------------------------------------- comparison helpers

FAILURES = []


def fail(msg, code=1):
    log(f"FAIL: {msg}")
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(code)


def check(cond, msg):
    if not cond:
        FAILURES.append(msg)
        log(f"FAIL: {msg}")
    return cond


def maxdiff(a, b):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        return float("inf")
    return (a - b).abs().max().item() if a.numel() else 0.0


def compare(name, ids, peft_lp, peft_last, lore, tol_lp, tol_logits):
    ok_tokens = check(list(lore["tokens"]) == list(ids),
                      f"{name}: lore tokenized the text differently "
                      f"({len(lore['tokens'])} ids vs {len(ids)}; first difference at "
                      f"{next((i for i, (a, b) in enumerate(zip(lore['tokens'], ids)) if a != b), min(len(ids), len(lore['tokens'])))})")
    n_lp = len(lore["logprobs"])
    check(n_lp == len(ids) - 1, f"{name}: lore gave {n_lp} logprobs for {len(ids)} tokens (want n-1)")
    check(len(lore["last_logits"]) == peft_last.numel(),
          f"{name}: lore's last_logits has {len(lore['last_logits'])} entries, vocab is {peft_last.numel()}")
    d_lp = maxdiff(lore["logprobs"], peft_lp) if ok_tokens else float("inf")
    d_last = maxdiff(lore["last_logits"], peft_last) if ok_tokens else float("inf")
    # Argmax of the last position must agree too (a cheap sanity figure).
    same_argmax = (ok_tokens and len(lore["last_logits"]) == peft_last.numel()
                   and int(torch.tensor(lore["last_logits"]).argmax()) == int(peft_last.argmax()))
    log(f"{name}: max|Δ logprob| = {d_lp:.3e} (tol {tol_lp:g}), max|Δ last logit| = {d_last:.3e} "
        f"(tol {tol_logits:g}), last argmax equal: {same_argmax}")
    check(d_lp <= tol_lp, f"{name}: logprobs differ by {d_lp:.3e} > {tol_lp:g}")
    check(d_last <= tol_logits, f"{name}: last logits differ by {d_last:.3e} > {tol_logits:g}")
    return {"max_abs_logprob": d_lp, "max_abs_last_logit": d_last, "same_last_argmax": same_argmax}


def effect(name, base_lp, base_last, lp, last, diff, min_ratio):
    """The adapter's own effect on the figures, and its ratio to the lore-vs-PEFT difference."""
    e_lp = maxdiff(base_lp, lp)
    e_last = maxdiff(base_last, last)
    ratio = e_lp / max(diff["max_abs_logprob"], 1e-12) if diff else None
    msg = f"{name}: adapter effect (base vs base+adapter, PEFT): max|Δ logprob| = {e_lp:.3e}, max|Δ last logit| = {e_last:.3e}"
    if ratio is not None:
        msg += f"; effect / lore-vs-PEFT diff = {ratio:.3g}"
    log(msg)
    if ratio is not None:
        check(ratio >= min_ratio,
              f"{name}: the adapter changes logprobs by only {e_lp:.3e}, not >= {min_ratio:g}x the "
              f"lore-vs-PEFT difference: the comparison cannot tell the adapter apart from noise")
    return {"effect_max_abs_logprob": e_lp, "effect_max_abs_last_logit": e_last, "effect_ratio": ratio}


# ---------------------------------------------------------------- (c) adapter folder checks

class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def load_peft_quietly(base, adapter):
    """PeftModel.from_pretrained with every warning (warnings + logging) captured."""
    from peft import PeftModel

    handler = _Capture()
    loggers = [logging.getLogger(n) for n in ("", "peft", "transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base, str(adapter))
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    msgs = [str(x.message) for x in w] + handler.records
    model.eval()
    return model, msgs


KEY_WORDS = ("missing", "unexpected", "not found", "were not used", "mismatch", "newly initialized")


def check_adapter_dir(export, adapter):
    """(c): the folder's config, tensor names/shapes, and a by-hand load's load_result."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    report = {}
    adapter = Path(adapter)
    cfg_path = adapter / "adapter_config.json"
    st_path = adapter / "adapter_model.safetensors"
    if not check(cfg_path.exists(), f"{adapter}: no adapter_config.json"):
        return report
    if not check(st_path.exists(), f"{adapter}: no adapter_model.safetensors"):
        return report
    raw = json.loads(cfg_path.read_text())
    for k, want in (("peft_type", "LORA"), ("task_type", "CAUSAL_LM")):
        check(raw.get(k) == want, f"adapter_config.json: {k} = {raw.get(k)!r}, want {want!r}")
    for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "base_model_name_or_path"):
        check(k in raw, f"adapter_config.json lacks `{k}`")
    tm = raw.get("target_modules")
    check(isinstance(tm, list) and sorted(tm) == sorted(TARGETS),
          f"adapter_config.json: target_modules = {tm!r}, want the 7 projections {TARGETS}")
    cfg = LoraConfig.from_pretrained(str(adapter))  # PEFT's own parse of the file
    report["config"] = {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
                        "use_rslora": getattr(cfg, "use_rslora", False),
                        "target_modules": sorted(cfg.target_modules)}

    tensors = load_file(str(st_path))
    base = load_base(export)
    n_layers = base.config.num_hidden_layers
    shapes_ok = True
    expected = set()
    for i in range(n_layers):
        for t in TARGETS:
            part = "self_attn" if t.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            lin = getattr(getattr(base.model.layers[i], part), t)
            pre = f"base_model.model.model.layers.{i}.{part}.{t}"
            a, b = f"{pre}.lora_A.weight", f"{pre}.lora_B.weight"
            expected |= {a, b}
            if a in tensors and tuple(tensors[a].shape) != (cfg.r, lin.in_features):
                shapes_ok = check(False, f"{a}: shape {tuple(tensors[a].shape)}, want {(cfg.r, lin.in_features)}")
            if b in tensors and tuple(tensors[b].shape) != (lin.out_features, cfg.r):
                shapes_ok = check(False, f"{b}: shape {tuple(tensors[b].shape)}, want {(lin.out_features, cfg.r)}")
    missing_in_file = sorted(expected - set(tensors))
    extra_in_file = sorted(set(tensors) - expected)
    check(not missing_in_file, f"adapter file lacks {len(missing_in_file)} tensors, e.g. {missing_in_file[:3]}")
    check(not extra_in_file, f"adapter file has {len(extra_in_file)} unexpected tensors, e.g. {extra_in_file[:3]}")
    dtypes = sorted({str(v.dtype) for v in tensors.values()})
    b_max = max((v.abs().max().item() for k, v in tensors.items() if "lora_B" in k), default=0.0)
    report.update({"tensors": len(tensors), "expected_tensors": len(expected), "shapes_ok": shapes_ok,
                   "dtypes": dtypes, "max_abs_lora_B": b_max})
    log(f"(c) adapter file: {len(tensors)} tensors (want {len(expected)}), dtypes {dtypes}, "
        f"max|B| = {b_max:.3e}, config r={cfg.r} alpha={cfg.lora_alpha}")
    check(b_max > 0, "every lora_B is zero: the adapter does nothing (untrained?)")

    # By hand: the same path PeftModel.from_pretrained takes, with the load_result visible.
    pm = get_peft_model(base, cfg)
    res = set_peft_model_state_dict(pm, tensors)
    unexpected = list(getattr(res, "unexpected_keys", []) or [])
    missing_lora = [k for k in (getattr(res, "missing_keys", []) or []) if "lora_" in k]
    report["load_result"] = {"unexpected_keys": len(unexpected), "missing_lora_keys": len(missing_lora)}
    log(f"(c) set_peft_model_state_dict: {len(unexpected)} unexpected keys, {len(missing_lora)} missing LoRA keys")
    check(not unexpected, f"PEFT load: unexpected keys, e.g. {unexpected[:3]}")
    check(not missing_lora, f"PEFT load: missing LoRA keys, e.g. {missing_lora[:3]}")
    # Every tensor landed where its name says (exact copy).
    sd = pm.state_dict()
    worst = 0.0
    for k, v in tensors.items():
        k2 = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        if k2 in sd:
            worst = max(worst, (sd[k2].float() - v.float()).abs().max().item())
        else:
            check(False, f"{k} has no place in the PEFT model ({k2})")
    report["loaded_tensor_max_abs_diff"] = worst
    check(worst == 0.0, f"tensors after loading differ from the file by {worst:.3e}")
    del pm, base
    return report


def compare_merged(export, adapter, merged, tol):
    """Optional: lore's merged export vs PEFT's merge_and_unload, tensor by tensor."""
    from safetensors.torch import load_file

    plain = load_file(str(Path(export) / "model.safetensors"))
    base = load_base(export)
    pm, _ = load_peft_quietly(base, adapter)
    want = {k: v.detach().clone() for k, v in pm.merge_and_unload().state_dict().items()}
    got = load_file(str(Path(merged) / "model.safetensors"))
    worst, worst_name, compared, moved = 0.0, None, 0, 0.0
    for k, v in want.items():
        if k == "lm_head.weight" and k not in got:
            continue  # tied
        if not check(k in got, f"merged export lacks {k}"):
            continue
        compared += 1
        d = maxdiff(got[k], v)
        if worst_name is None or d > worst:
            worst, worst_name = d, k
        if k in plain:
            moved = max(moved, maxdiff(plain[k], v))
    extra = sorted(set(got) - set(want))
    check(not extra, f"merged export has unexpected tensors, e.g. {extra[:3]}")
    check(compared > 0, "merged export: no tensor in common with the model")
    log(f"merged export vs PEFT merge_and_unload: {compared} tensors, max|Δ| = {worst:.3e} at {worst_name} "
        f"(tol {tol:g}); the merge itself moves weights by up to {moved:.3e}")
    check(worst <= tol, f"merged export differs from PEFT's merge by {worst:.3e} > {tol:g}")
    check(moved > 10 * worst, f"the merge moves weights by only {moved:.3e}: cannot tell it from the {worst:.3e} difference")
    return {"max_abs_weight": worst, "at": worst_name, "tensors": compared, "merge_moves_weights_by": moved}


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-export", required=True, help="float HF folder from `lore finetune export`")
    ap.add_argument("--lore-adapter", required=True, help="adapter folder lore trained")
    ap.add_argument("--work", required=True, help="scratch folder (WORK/peft_adapter is written)")
    ap.add_argument("--merged-export", help="optional: `lore finetune export --adapter` output to check")
    ap.add_argument("--lore-bin", default=os.environ.get("LORE_BIN", "target/release/lore"))
    ap.add_argument("--text", default=DEFAULT_TEXT, help="text to score (default: a short ChatML chat)")
    ap.add_argument("--tol-logprobs", type=float, default=1e-3)
    ap.add_argument("--tol-logits", type=float, default=1e-2)
    ap.add_argument("--tol-merged", type=float, default=1e-4)
    ap.add_argument("--min-effect-ratio", type=float, default=10.0,
                    help="the adapter's effect on logprobs must be this many times the lore-vs-PEFT diff")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--peft-b-scale", type=float, default=1.0,
                    help="(b): multiply PEFT's random lora_B by this before saving (init_lora_weights=False "
                         "gives |B| up to ~0.35, a strong perturbation; shrink it if that is too harsh)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-lore", action="store_true", help="only the PEFT side (no lore binary needed)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    import peft
    import transformers

    export = Path(args.base_export)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    summary = {"torch": torch.__version__, "transformers": transformers.__version__,
               "peft": peft.__version__, "text_chars": len(args.text)}

    ids = load_tokenizer_ids(export, args.text)
    summary["tokens"] = len(ids)
    log(f"text: {len(args.text)} chars -> {len(ids)} tokens (no special tokens added)")

    # Base, no adapter.
    base = load_base(export)
    base_lp, base_last = score(base, ids)
    summary["base_mean_logprob"] = base_lp.mean().item()
    if not args.skip_lore:
        lore_base = lore_score(args.lore_bin, export, None, args.text)
        summary["base"] = compare("base (no adapter)", ids, base_lp, base_last, lore_base,
                                  args.tol_logprobs, args.tol_logits)

    # (a) lore's adapter applied by PEFT.
    pm, msgs = load_peft_quietly(base, args.lore_adapter)
    bad = [m for m in msgs if any(w in m.lower() for w in KEY_WORDS)]
    for m in msgs:
        log(f"  warning while loading lore's adapter: {m[:300]}")
    check(not bad, f"PeftModel.from_pretrained warned about keys: {bad[:2]}")
    a_lp, a_last = score(pm, ids)
    summary["a_peft_warnings"] = len(msgs)
    summary["a_key_warnings"] = len(bad)
    diff_a = None
    if not args.skip_lore:
        lore_a = lore_score(args.lore_bin, export, args.lore_adapter, args.text)
        diff_a = compare("(a) lore adapter: lore vs PEFT", ids, a_lp, a_last, lore_a,
                         args.tol_logprobs, args.tol_logits)
    summary["a"] = {**(diff_a or {}), **effect("(a) lore adapter", base_lp, base_last, a_lp, a_last,
                                                diff_a, args.min_effect_ratio)}
    del pm, base

    # (c) the adapter folder itself.
    summary["c"] = check_adapter_dir(export, args.lore_adapter)

    # (b) a PEFT adapter scored by lore.
    base = load_base(export)
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(TARGETS),
                     init_lora_weights=False, task_type="CAUSAL_LM", bias="none")
    pm = get_peft_model(base, cfg)
    if args.peft_b_scale != 1.0:
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.mul_(args.peft_b_scale)
    pm.eval()
    b_lp, b_last = score(pm, ids)
    out = work / "peft_adapter"
    pm.save_pretrained(str(out))
    log(f"(b) PEFT adapter (r 8, alpha 16, init_lora_weights=False, seed {args.seed}, B x {args.peft_b_scale:g}) "
        f"saved to {out}")
    diff_b = None
    if not args.skip_lore:
        lore_b = lore_score(args.lore_bin, export, out, args.text)
        diff_b = compare("(b) PEFT adapter: lore vs PEFT", ids, b_lp, b_last, lore_b,
                         args.tol_logprobs, args.tol_logits)
    summary["b"] = {**(diff_b or {}), **effect("(b) PEFT adapter", base_lp, base_last, b_lp, b_last,
                                                diff_b, args.min_effect_ratio),
                    "adapter": str(out)}
    del pm, base

    if args.merged_export:
        summary["merged"] = compare_merged(export, args.lore_adapter, args.merged_export, args.tol_merged)

    summary["lore_compared"] = not args.skip_lore
    summary["failures"] = FAILURES
    summary["ok"] = not FAILURES
    print(json.dumps(summary))
    if FAILURES:
        log(f"{len(FAILURES)} check(s) failed")
        sys.exit(1)
    log("all checks passed" + ("" if not args.skip_lore else " (PEFT side only: --skip-lore)"))


if __name__ == "__main__":
    main()
