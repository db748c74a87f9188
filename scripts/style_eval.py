#!/usr/bin/env python3
"""Scores answers for the pirate-greeting style of tests/data/finetune (python3 stdlib only).

An answer is "ahoy" when, after stripping whitespace, it starts with "Ahoy" (case-sensitive),
and "ahoy+arr" when it is "ahoy" and also contains "Arr!" anywhere. "strict" (a diagnostic)
means it starts with "Ahoy!" and ends with "Arr!" exactly, as every training answer does.

Standalone:
  scripts/style_eval.py ANSWERS.jsonl        rows {"prompt", "answer"}; prints the rates as JSON

Used by scripts/bench-finetune-style:
  scripts/style_eval.py --list-prompts HELDOUT.jsonl
        prints each row's "prompt", NUL-terminated (for `read -d ''`)
  scripts/style_eval.py --row PROMPT < CHAT.json
        reads `lore chat --json` output on stdin, prints one {"prompt", "answer"} JSONL row
  scripts/style_eval.py --report --base BASE.jsonl --tuned TUNED.jsonl --finetune FT.json \
        [--examples 3] [--summary-out FILE] [--extra KEY=VALUE ...]
        prints the comparison table, then a one-line JSON summary (also written to FILE)
"""

import argparse
import json
import sys


def read_jsonl(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"error: {path}:{n}: not JSON: {e}")
    return rows


def is_ahoy(answer):
    return answer.strip().startswith("Ahoy")


def is_ahoy_arr(answer):
    return is_ahoy(answer) and "Arr!" in answer


def is_strict(answer):
    a = answer.strip()
    return a.startswith("Ahoy!") and a.endswith("Arr!")


def rates(rows, path="<rows>"):
    answers = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("answer"), str):
            sys.exit(f"error: {path}: row {n} has no string \"answer\"")
        answers.append(row["answer"])
    n = len(answers)

    def frac(k):
        return round(k / n, 4) if n else 0.0

    ahoy = sum(map(is_ahoy, answers))
    both = sum(map(is_ahoy_arr, answers))
    strict = sum(map(is_strict, answers))
    return {
        "n": n,
        "ahoy": ahoy,
        "ahoy_rate": frac(ahoy),
        "ahoy_arr": both,
        "ahoy_arr_rate": frac(both),
        "strict": strict,
        "strict_rate": frac(strict),
    }


def list_prompts(path):
    out = sys.stdout
    for n, row in enumerate(read_jsonl(path), 1):
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt.strip() or "\0" in prompt:
            sys.exit(f"error: {path}: row {n} has no usable \"prompt\"")
        out.write(prompt + "\0")


def make_row(prompt):
    text = sys.stdin.read()
    try:
        chat = json.loads(text)
    except json.JSONDecodeError as e:
        sys.exit(f"error: lore chat output is not one JSON object ({e}): {text[:200]!r}")
    answer = chat.get("answer") if isinstance(chat, dict) else None
    if not isinstance(answer, str):
        sys.exit(f"error: lore chat output has no string \"answer\": {text[:200]!r}")
    row = {"prompt": prompt, "answer": answer}
    if isinstance(chat, dict) and "finish_reason" in chat:
        row["finish_reason"] = chat["finish_reason"]
    print(json.dumps(row, ensure_ascii=False))


def fmt(v, spec=".4f"):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    return "n/a" if v is None else str(v)


def clip(s, width=150):
    s = " ".join(s.split())
    return s if len(s) <= width else s[: width - 1] + "…"


def parse_value(v):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def report(args):
    base_rows = read_jsonl(args.base)
    tuned_rows = read_jsonl(args.tuned)
    base = rates(base_rows, args.base)
    tuned = rates(tuned_rows, args.tuned)
    ft = {}
    if args.finetune:
        with open(args.finetune, encoding="utf-8") as f:
            try:
                ft = json.load(f)
            except json.JSONDecodeError as e:
                sys.exit(f"error: {args.finetune}: not one JSON object: {e}")
    if not isinstance(ft, dict):
        sys.exit(f"error: {args.finetune}: expected a JSON object")

    print()
    print("== training (lore finetune --json) ==")
    for key, spec in [("initial_val_loss", ".4f"), ("final_val_loss", ".4f"), ("steps", "d"),
                      ("train_tokens", "d"), ("elapsed_s", ".1f"), ("tokens_per_s", ".1f"),
                      ("peak_rss_mb", ".0f")]:
        v = ft.get(key)
        if isinstance(v, float) and spec == "d":
            spec = ".0f"
        print(f"  {key:<18} {fmt(v, spec)}")
    print()
    print(f"== style on {tuned['n']} held-out prompts ==")
    print(f"  {'':<34} {'base':>12} {'tuned':>12}")
    for label, key in [("starts with \"Ahoy\"", "ahoy"),
                       ("... and contains \"Arr!\"", "ahoy_arr"),
                       ("strict \"Ahoy!\"...\"Arr!\"", "strict")]:
        cells = [f"{r[key]}/{r['n']} {r[key + '_rate']:.2f}" for r in (base, tuned)]
        print(f"  {label:<34} {cells[0]:>12} {cells[1]:>12}")
    print(f"  {'val loss (before -> after)':<34} "
          f"{fmt(ft.get('initial_val_loss')):>12} {fmt(ft.get('final_val_loss')):>12}")

    k = max(0, args.examples)
    for name, rows in (("base", base_rows), ("tuned", tuned_rows)):
        print()
        print(f"== {name}: first {min(k, len(rows))} answers ==")
        for row in rows[:k]:
            print(f"  Q: {clip(row.get('prompt', ''))}")
            print(f"  A: {clip(row['answer'])}")

    summary = {
        "n_prompts": tuned["n"],
        "base_ahoy_rate": base["ahoy_rate"],
        "tuned_ahoy_rate": tuned["ahoy_rate"],
        "base_ahoy_arr_rate": base["ahoy_arr_rate"],
        "tuned_ahoy_arr_rate": tuned["ahoy_arr_rate"],
        "base_strict_rate": base["strict_rate"],
        "tuned_strict_rate": tuned["strict_rate"],
    }
    for key in ("initial_val_loss", "final_val_loss", "steps", "train_tokens", "elapsed_s",
                "tokens_per_s", "peak_rss_mb"):
        summary[key] = ft.get(key)
    for kv in args.extra or []:
        key, sep, value = kv.partition("=")
        if not sep:
            sys.exit(f"error: --extra expects KEY=VALUE, got {kv!r}")
        summary[key] = parse_value(value)
    line = json.dumps(summary, ensure_ascii=False)
    if args.summary_out:
        with open(args.summary_out, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    print()
    print(line)


def main():
    p = argparse.ArgumentParser(
        description="Score answers for the 'Ahoy! ... Arr!' style.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("answers", nargs="?", help="JSONL of {\"prompt\", \"answer\"}: print rates")
    p.add_argument("--list-prompts", metavar="FILE")
    p.add_argument("--row", metavar="PROMPT")
    p.add_argument("--report", action="store_true")
    p.add_argument("--base")
    p.add_argument("--tuned")
    p.add_argument("--finetune")
    p.add_argument("--examples", type=int, default=3)
    p.add_argument("--summary-out")
    p.add_argument("--extra", action="append", metavar="KEY=VALUE")
    args = p.parse_args()

    modes = [args.answers is not None, args.list_prompts is not None, args.row is not None,
             args.report]
    if sum(modes) != 1:
        p.error("give exactly one of: ANSWERS.jsonl, --list-prompts, --row, --report")
    if args.answers is not None:
        print(json.dumps(rates(read_jsonl(args.answers), args.answers)))
    elif args.list_prompts is not None:
        list_prompts(args.list_prompts)
    elif args.row is not None:
        make_row(args.row)
    else:
        if not (args.base and args.tuned):
            p.error("--report needs --base and --tuned")
        report(args)


if __name__ == "__main__":
    main()
