#!/usr/bin/env python3
"""Helpers for scripts/bench-llm (lore vs llama.cpp on the same GGUF, prompt and threads).

  bench_llamacpp.py prompt ARTICLE.md NWORDS OUT.txt      # stdlib only
      The user message: a fixed instruction plus the first NWORDS words of the article body
      (the "# Title" line dropped). Deterministic, so both systems see the same text.
  bench_llamacpp.py llama GGUF PROMPT.txt RUNS MAXTOK THREADS OUT.json   # needs llama-cpp-python
      Renders the message with the GGUF's own chat template, as lore does (Qwen2.5's adds its
      default system message; ChatML when the file has no template), runs one warm-up plus RUNS timed
      generations with the low-level API (greedy argmax over the last position's logits, end of
      turn ignored so every run makes MAXTOK tokens) and writes per-run timings, the tokens,
      the text and this process's VmHWM (peak RSS) read at the end.
  bench_llamacpp.py report LLAMA.json LORE_DIR THREADS LLAMA_DIR   # stdlib only
      LORE_DIR holds run-K.json (lore chat --json) and run-K.time (/usr/bin/time -v) for the
      warm-up (K=0) and the timed runs; prints the table and the ratios lore/llama.cpp. Each
      of LORE_DIR and LLAMA_DIR also holds `cpu` (machine busy jiffies before/after the phase,
      its start/end time, CLK_TCK) and its processes' *.time files, from which it reports how
      much CPU other processes took during each phase.

Timing definitions, identical on both sides (they mirror lore's generate loop):
  prefill_s  one forward pass over the whole prompt; prefill tok/s = prompt_tokens / prefill_s.
  decode_s   from the end of prefill to the last generated token: sample a token from the
             current logits, then run the model on that one token (not after the last one);
             decode tok/s = completion_tokens / decode_s. The prompt is never re-evaluated.
"""
import json
import statistics
import sys
import time
from pathlib import Path


def chat_prompt(llm, message: str) -> str:
    """One user message as lore renders it: through the GGUF's chat template (which may add a
    default system message, as Qwen2.5's does), or ChatML when the file has none."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def text(token: int) -> str:
        return llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    formatter = Jinja2ChatFormatter(template, eos_token=text(llm.token_eos()),
                                    bos_token=text(llm.token_bos()))
    return formatter(messages=[{"role": "user", "content": message}]).prompt


INSTRUCTION = "Rewrite the following passage in your own words, in full detail:\n\n"


def make_prompt(article: str, nwords: str, out: str) -> None:
    words = Path(article).read_text(encoding="utf-8").split("\n", 1)[1].split()
    n = int(nwords)
    if len(words) < n:
        sys.exit(f"{article} has only {len(words)} words, {n} requested")
    Path(out).write_text(INSTRUCTION + " ".join(words[:n]), encoding="utf-8")


def vm_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def llama(gguf: str, prompt_file: str, runs: str, maxtok: str, threads: str, out: str) -> None:
    import numpy as np
    from llama_cpp import Llama

    rss_before_kib = vm_kib("VmRSS")  # the interpreter + numpy, before any model
    t = int(threads)
    llm = Llama(model_path=gguf, n_ctx=2048, n_threads=t, n_threads_batch=t, n_batch=512,
                verbose=False)
    n_vocab = llm.n_vocab()
    prompt = chat_prompt(llm, Path(prompt_file).read_text(encoding="utf-8"))
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    maxtok = int(maxtok)

    def last_logits():
        # With logits_all=False only the batch's last position has logits: argmax of those.
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))

    def one_run():
        llm.reset()  # n_tokens = 0, so the next eval() also clears the whole KV cache
        t0 = time.perf_counter()
        llm.eval(tokens)
        prefill_s = time.perf_counter() - t0
        assert llm.n_tokens == len(tokens)
        generated = []
        t0 = time.perf_counter()
        while True:
            nxt = int(np.argmax(last_logits()))
            generated.append(nxt)  # end of turn ignored on purpose: always MAXTOK tokens
            if len(generated) == maxtok:
                break
            llm.eval([nxt])  # one new token at position n_tokens; the prompt stays in the cache
        decode_s = time.perf_counter() - t0
        assert llm.n_tokens == len(tokens) + maxtok - 1
        return prefill_s, decode_s, generated

    one_run()  # warm-up: first-call allocations, weights paged in from the mmap
    results = []
    for _ in range(int(runs)):
        prefill_s, decode_s, generated = one_run()
        results.append({"prefill_s": prefill_s, "decode_s": decode_s,
                        "completion_tokens": len(generated)})
    eos = llm.token_eos()
    text = llm.detokenize(generated).decode("utf-8", errors="replace")
    json.dump({
        "prompt_tokens": len(tokens),
        "runs": results,
        "tokens": generated,
        "text": text,
        "first_eos_at": generated.index(eos) if eos in generated else None,
        "rss_before_model_kib": rss_before_kib,
        "vm_hwm_kib": vm_kib("VmHWM"),
    }, open(out, "w"))


def time_field(time_file: Path, name: str) -> float:
    """A field of /usr/bin/time -v's report, e.g. "Maximum resident set size (kbytes)"."""
    for line in time_file.read_text().splitlines():
        if line.strip().startswith(name):
            return float(line.rsplit(":", 1)[1])
    sys.exit(f"no '{name}' in {time_file}")


def lore_max_rss_kib(time_file: Path) -> int:
    return int(time_field(time_file, "Maximum resident set size"))


def other_cpu(phase_dir: Path):
    """(wall seconds, CPU% of one core that processes other than the phase's own used)."""
    j0, j1, t0, t1, hz = (float(x) for x in (phase_dir / "cpu").read_text().split())
    own = sum(time_field(f, "User time") + time_field(f, "System time")
              for f in phase_dir.glob("*.time"))
    wall = t1 - t0
    return wall, max(0.0, 100 * ((j1 - j0) / hz - own) / wall)


def summarise(runs, prompt_tokens):
    pre = [prompt_tokens / r["prefill_s"] for r in runs]
    dec = [r["completion_tokens"] / r["decode_s"] for r in runs]
    return {"prefill_best": max(pre), "prefill_median": statistics.median(pre),
            "decode_best": max(dec), "decode_median": statistics.median(dec),
            "prefill_all": pre, "decode_all": dec}


def report(llama_json: str, lore_dir: str, threads: str, llama_dir: str) -> None:
    lj = json.load(open(llama_json))
    ld = Path(lore_dir)
    timed = sorted((p for p in ld.glob("run-*.json") if p.stem != "run-0"),
                   key=lambda p: int(p.stem.split("-")[1]))
    lore_runs, lore_rss, answers = [], [], []
    for p in timed:
        j = json.load(open(p))
        lore_runs.append({"prefill_s": j["timings"]["prefill_s"], "decode_s": j["timings"]["decode_s"],
                          "completion_tokens": j["usage"]["completion_tokens"],
                          "prompt_tokens": j["usage"]["prompt_tokens"],
                          "finish_reason": j.get("finish_reason")})
        answers.append(j["answer"])
    for p in ld.glob("run-*.time"):  # warm-up included: peak RSS does not depend on timing
        lore_rss.append(lore_max_rss_kib(p))
    lore_prompt = lore_runs[0]["prompt_tokens"]
    lo = summarise(lore_runs, lore_prompt)
    ll = summarise(lj["runs"], lj["prompt_tokens"])
    lo_rss, ll_rss = max(lore_rss) / 1024, lj["vm_hwm_kib"] / 1024
    lo_ct = sorted({r["completion_tokens"] for r in lore_runs})
    ll_ct = sorted({r["completion_tokens"] for r in lj["runs"]})

    print(f"\nbest of {len(lore_runs)} timed runs per system, after one warm-up; {threads} threads each "
          "(median in brackets)")
    hdr = f"{'system':<10} {'prompt tok':>10} {'new tok':>8} {'prefill tok/s':>20} {'decode tok/s':>20} {'peak RSS MiB':>13}"
    print(hdr)
    print("-" * len(hdr))
    for name, s, pt, ct, rss in (("lore", lo, lore_prompt, lo_ct, lo_rss),
                                 ("llama.cpp", ll, lj["prompt_tokens"], ll_ct, ll_rss)):
        pre = f"{s['prefill_best']:.1f} ({s['prefill_median']:.1f})"
        dec = f"{s['decode_best']:.1f} ({s['decode_median']:.1f})"
        cts = "/".join(map(str, ct))
        print(f"{name:<10} {pt:>10} {cts:>8} {pre:>20} {dec:>20} {rss:>13.0f}")
    print(f"{'lore/llama.cpp':<30} {lo['prefill_best'] / ll['prefill_best']:>19.2f}x "
          f"{lo['decode_best'] / ll['decode_best']:>19.2f}x {lo_rss / ll_rss:>12.2f}x")

    print("\nall timed runs, tok/s:")
    print("  lore      prefill " + " ".join(f"{x:.1f}" for x in lo["prefill_all"])
          + " | decode " + " ".join(f"{x:.1f}" for x in lo["decode_all"]))
    print("  llama.cpp prefill " + " ".join(f"{x:.1f}" for x in ll["prefill_all"])
          + " | decode " + " ".join(f"{x:.1f}" for x in ll["decode_all"]))
    print(f"lore peak RSS per process (MiB): {', '.join(f'{x / 1024:.0f}' for x in sorted(lore_rss))}; "
          f"llama.cpp's includes {lj['rss_before_model_kib'] / 1024:.0f} MiB of Python + numpy "
          "measured before the model loaded")
    notes = []
    if lore_prompt != lj["prompt_tokens"]:
        notes.append(f"WARNING: prompt token counts differ (lore {lore_prompt}, llama.cpp "
                     f"{lj['prompt_tokens']}): the tokenizations do not match")
    reasons = sorted({str(r["finish_reason"]) for r in lore_runs})
    if lo_ct != ll_ct:
        notes.append(f"lore made {'/'.join(map(str, lo_ct))} tokens (finish_reason {'/'.join(reasons)}); "
                     f"llama.cpp ignores end of turn and made {'/'.join(map(str, ll_ct))}")
    if lj["first_eos_at"] is not None:
        notes.append(f"llama.cpp's greedy output reaches end of turn after {lj['first_eos_at']} tokens")
    # Same weights, same greedy decoding: the texts should agree (up to float rounding drift).
    a, b = answers[-1], lj["text"]
    common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    notes.append(f"greedy outputs agree on the first {common} of {len(a)} characters of lore's answer")
    for name, d in (("lore", ld), ("llama.cpp", Path(llama_dir))):
        wall, other = other_cpu(d)
        line = f"{name} phase: {wall:.0f} s wall; other processes used {other:.0f}% of a CPU meanwhile"
        if other > 10:
            line = "WARNING: " + line + " -- its figures are not trustworthy, rerun on a quiet machine"
        notes.append(line)
    print("\n".join(notes))
    print(f"lore's answer starts: {a[:120]!r}")
    print(f"llama.cpp's starts:   {b[:120]!r}")


if __name__ == "__main__":
    cmds = {"prompt": make_prompt, "llama": llama, "report": report}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])
