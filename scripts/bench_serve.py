#!/usr/bin/env python3
"""The client half of scripts/bench-serve: lore serve vs llama.cpp's server (llama-cpp-python),
both already running, over their OpenAI-compatible streamed /v1/chat/completions. Stdlib only
(http.client), so the timings hold nothing but the HTTP exchange and the server's work.

  bench_serve.py --lore HOST:PORT --lore-pid PID --peer HOST:PORT --peer-pid PID
                 [--peer-model NAME] [--runs 8] [--max-tokens 128] [--clients 4]
                 [--per-client 4] [--repeat-penalty 1.1] [--json]

Phases (the same prompts, in the same order, on both servers):
  warm-up     one untimed request per server (a prompt used nowhere else);
  sequential  --runs requests per server, one at a time, INTERLEAVED (lore, peer, peer, lore,
              lore, peer, ...) so that background load, if any, falls on both alike;
  concurrent  --clients threads x --per-client requests each, all started at once, one server
              after the other (lore first).
Every request: stream true, temperature 0 (greedy), max_tokens --max-tokens, a system message
and a user question (~40-60 prompt tokens with the template). The 16 prompts open with
different system messages, so llama-cpp-python's KV-cache prefix reuse (it keeps the previous
request's tokens and skips the common prefix) saves only the few template tokens; lore has
no such cache. Repetition penalty: --repeat-penalty on both (lore: `serve --repeat-penalty`,
set by bench-serve; llama.cpp: the request's `repeat_penalty`); 1.1 is both servers' default,
both over the last 64 tokens.

Per request: TTFT = request sent -> first chunk with non-empty content; decode tok/s =
(completion tokens - 1) / (last content chunk - first content chunk); total = request sent ->
`data: [DONE]`. Completion tokens (the end-of-turn token never counted, on either side): the
final `usage` chunk when the server sends one (lore does with stream_options.include_usage);
otherwise max_tokens when finish_reason is "length", else the answer re-tokenized by the
server's POST /extras/tokenize/count (llama-cpp-python; untimed, after the request), else the
number of content chunks. The source is reported.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

WARMUP = ("You are a helpful assistant.",
          "Name three primary colours and say one short thing about each of them.")

PROMPTS = [
    ("You are a concise assistant for a hiking club.",
     "What should I pack for a one-day mountain hike in early autumn, when the weather can change quickly?"),
    ("Answer as a patient high-school physics teacher.",
     "Why does a spoon look bent when it stands in a glass of water? Please explain it simply."),
    ("Help a home cook plan simple meals.",
     "I have rice, eggs, spinach and a little cheese. What could I make for dinner tonight, and how?"),
    ("Act as a friendly and knowledgeable travel guide.",
     "I will spend two days in Lisbon in spring. Which neighbourhoods and sights should I not miss?"),
    ("Give practical advice to new gardeners.",
     "My tomato plant has yellow leaves near the bottom. What could cause this and what should I do about it?"),
    ("Explain computing ideas to complete beginners.",
     "What is the difference between memory and storage in a computer, and why does a program need both?"),
    ("Be a careful personal finance helper.",
     "How can a student with a small part-time income start saving money each month without much effort?"),
    ("Write in the voice of a museum curator.",
     "Describe in a few sentences why the ancient Egyptians built pyramids and how they were used."),
    ("Support someone who is learning a new language.",
     "What are good daily habits for learning Spanish vocabulary if I only have twenty minutes a day?"),
    ("Coach amateur runners preparing for races.",
     "I want to run my first 10 kilometre race in eight weeks. How should I structure my training?"),
    ("Answer questions about animals for children.",
     "Why do cats purr, and do they purr only when they are happy? Explain it for a curious ten-year-old."),
    ("Advise small business owners clearly and briefly.",
     "What are the first steps to take when opening a small coffee shop in a busy town centre?"),
    ("Summarise history for busy readers.",
     "What were the main causes of the fall of the Western Roman Empire? Give a short overview."),
    ("Help people write better emails at work.",
     "How should I politely ask my manager for a day off next week when the team is very busy?"),
    ("Explain weather and climate in plain words.",
     "Why is it usually colder at the top of a mountain than in the valley below, even though it is closer to the sun?"),
    ("Offer friendly tips on healthy sleep.",
     "I often wake up tired even after eight hours in bed. What habits could help me sleep better?"),
]

TIMEOUT_S = 600


class Server:
    def __init__(self, name, addr, pid, model, extra):
        self.name = name
        host, _, port = addr.rpartition(":")
        self.host, self.port = host, int(port)
        self.pid = pid
        self.model = model
        self.extra = extra  # request fields only this server gets
        self.tokenize_ok = None  # /extras/tokenize/count usable? (None: untried)
        self.tokenize_base = 0

    def post(self, path, body):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        try:
            conn.request("POST", path, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data
        finally:
            conn.close()

    def count_tokens(self, text):
        """Tokens of `text` per the server's tokenizer (llama-cpp-python), or None."""
        if self.tokenize_ok is False:
            return None
        try:
            if self.tokenize_ok is None:
                # The count may include a BOS the tokenizer adds: measure it on one token.
                status, data = self.post("/extras/tokenize/count", {"input": "a"})
                if status != 200:
                    self.tokenize_ok = False
                    return None
                self.tokenize_base = json.loads(data)["count"] - 1
                self.tokenize_ok = True
            status, data = self.post("/extras/tokenize/count", {"input": text})
            if status != 200:
                return None
            return json.loads(data)["count"] - self.tokenize_base
        except (OSError, ValueError, KeyError):
            self.tokenize_ok = False
            return None

    def chat(self, prompt, max_tokens):
        """One streamed chat completion; returns a dict of timings, text and counts."""
        system, user = prompt
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        body.update(self.extra)
        payload = json.dumps(body).encode()
        r = {"server": self.name, "error": None}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        times, parts = [], []
        usage = finish = None
        done = False
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/chat/completions", body=payload,
                         headers={"Content-Type": "application/json",
                                  "Accept": "text/event-stream"})
            resp = conn.getresponse()
            if resp.status != 200:
                r["error"] = f"HTTP {resp.status}: {resp.read()[:300]!r}"
                return r
            while True:
                line = resp.readline()
                now = time.perf_counter()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, ": ping"/keep-alive comments, event: lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                obj = json.loads(data)
                if "error" in obj:
                    r["error"] = f"error chunk: {str(obj['error'])[:300]}"
                    break
                if obj.get("usage"):
                    usage = obj["usage"]
                for ch in obj.get("choices") or []:
                    content = (ch.get("delta") or {}).get("content")
                    if content:
                        times.append(now)
                        parts.append(content)
                    if ch.get("finish_reason"):
                        finish = ch["finish_reason"]
            t_end = time.perf_counter()
        except (OSError, ValueError, http.client.HTTPException) as e:
            r["error"] = f"{type(e).__name__}: {e}"
            return r
        finally:
            conn.close()
        if r["error"]:
            return r
        if not done:
            r["error"] = "the stream ended without data: [DONE]"
            return r
        if not times:
            r["error"] = "no content in the answer"
            return r
        text = "".join(parts)
        if usage and usage.get("completion_tokens"):
            tokens, source = int(usage["completion_tokens"]), "usage"
        elif finish == "length":
            tokens, source = max_tokens, "max_tokens (finish length)"
        else:
            n = self.count_tokens(text)
            tokens, source = (n, "re-tokenized") if n else (len(times), "content chunks")
        decode_s = times[-1] - times[0]
        r.update(
            text=text, finish=finish, tokens=tokens, token_source=source, chunks=len(times),
            prompt_tokens=(usage or {}).get("prompt_tokens"),
            ttft_s=times[0] - t0, decode_s=decode_s, total_s=t_end - t0,
            decode_tps=(tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else None,
            t_start=t0, t_end=t_end,
        )
        return r


# --- machine load: how much CPU others used while a phase ran ------------------------------

def machine_busy_s():
    """CPU-seconds the whole machine spent busy since boot (iowait and steal excluded)."""
    with open("/proc/stat") as f:
        a = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return (a[0] + a[1] + a[2] + a[5] + a[6]) / hz


def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Phase:
    """Wall time, and the CPU the bench's own processes vs everything else used meanwhile."""

    def __init__(self, name, pids):
        self.name, self.pids = name, pids

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.m0 = machine_busy_s()
        self.p0 = sum(proc_cpu_s(p) for p in self.pids) + sum(os.times()[:2])
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        busy = machine_busy_s() - self.m0
        ours = sum(proc_cpu_s(p) for p in self.pids) + sum(os.times()[:2]) - self.p0
        self.others_s = max(0.0, busy - ours)
        self.ours_s = ours
        ncpu = os.cpu_count() or 1
        self.others_pct = 100.0 * self.others_s / (self.wall * ncpu) if self.wall > 0 else 0.0
        return False

    def summary(self):
        return {"phase": self.name, "wall_s": round(self.wall, 2),
                "bench_cpu_s": round(self.ours_s, 2), "others_cpu_s": round(self.others_s, 2),
                "others_pct_of_all_cpus": round(self.others_pct, 1)}


def vm_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# --- phases --------------------------------------------------------------------------------

def sequential(servers, runs, max_tokens):
    out = {s.name: [] for s in servers}
    for i in range(runs):
        prompt = PROMPTS[i % len(PROMPTS)]
        # Alternate who goes first, so neither always follows the other.
        order = servers if i % 2 == 0 else list(reversed(servers))
        for s in order:
            r = s.chat(prompt, max_tokens)
            r["prompt_index"] = i % len(PROMPTS)
            out[s.name].append(r)
            if r["error"]:
                print(f"bench-serve: {s.name} sequential request {i}: {r['error']}", file=sys.stderr)
    return out


def concurrent(server, clients, per_client, max_tokens, offset):
    results = [None] * (clients * per_client)
    barrier = threading.Barrier(clients + 1)

    def client(c):
        barrier.wait()
        for j in range(per_client):
            k = c * per_client + j
            r = server.chat(PROMPTS[(offset + k) % len(PROMPTS)], max_tokens)
            results[k] = r
            if r["error"]:
                print(f"bench-serve: {server.name} concurrent client {c} request {j}: {r['error']}",
                      file=sys.stderr)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return results, wall


# --- summaries -----------------------------------------------------------------------------

def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def seq_summary(rs):
    ok = [r for r in rs if not r["error"]]
    decode_tok = sum(r["tokens"] - 1 for r in ok if r["decode_s"] > 0)
    decode_s = sum(r["decode_s"] for r in ok if r["decode_s"] > 0)
    total_s = sum(r["total_s"] for r in ok)
    return {
        "requests": len(rs), "errors": len(rs) - len(ok),
        "completion_tokens_mean": mean([r["tokens"] for r in ok]),
        "stopped_early": sum(1 for r in ok if r["finish"] != "length"),
        "prompt_tokens_mean": mean([r["prompt_tokens"] for r in ok]),
        "ttft_ms_median": 1e3 * median([r["ttft_s"] for r in ok]) if ok else None,
        "ttft_ms_mean": 1e3 * mean([r["ttft_s"] for r in ok]) if ok else None,
        # token-weighted: all decoded tokens over all decode time
        "decode_tps": decode_tok / decode_s if decode_s > 0 else None,
        "decode_tps_median": median([r["decode_tps"] for r in ok]),
        "total_s_mean": mean([r["total_s"] for r in ok]),
        "e2e_tps": sum(r["tokens"] for r in ok) / total_s if total_s > 0 else None,
        "token_sources": sorted({r["token_source"] for r in ok}),
    }


def conc_summary(rs, wall):
    ok = [r for r in rs if r and not r["error"]]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "requests": len(rs), "errors": len(rs) - len(ok), "wall_s": wall,
        "completion_tokens": tokens,
        "completion_tokens_mean": mean([r["tokens"] for r in ok]),
        "agg_tps": tokens / wall if wall > 0 else None,
        "latency_s_mean": mean([r["total_s"] for r in ok]),
        "ttft_ms_median": 1e3 * median([r["ttft_s"] for r in ok]) if ok else None,
        "ttft_ms_max": 1e3 * max(r["ttft_s"] for r in ok) if ok else None,
        "token_sources": sorted({r["token_source"] for r in ok}),
    }


def shared_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# (key, section, label, unit format, better: "higher"/"lower"/None)
ROWS = [
    ("seq", "prompt_tokens_mean", "prompt tokens / request (mean)", "{:.1f}", None),
    ("seq", "completion_tokens_mean", "completion tokens / answer (mean)", "{:.1f}", None),
    ("seq", "stopped_early", "answers ended before max_tokens", "{:d}", None),
    ("seq", "ttft_ms_median", "TTFT median (ms)", "{:.1f}", "lower"),
    ("seq", "ttft_ms_mean", "TTFT mean (ms)", "{:.1f}", "lower"),
    ("seq", "decode_tps", "decode tok/s (all tokens / all decode time)", "{:.1f}", "higher"),
    ("seq", "decode_tps_median", "decode tok/s (median of requests)", "{:.1f}", "higher"),
    ("seq", "total_s_mean", "total time / request (mean, s)", "{:.3f}", "lower"),
    ("seq", "e2e_tps", "end-to-end completion tok/s", "{:.1f}", "higher"),
    ("conc", "wall_s", "concurrent: wall time (s)", "{:.2f}", None),
    ("conc", "completion_tokens_mean", "concurrent: completion tokens / answer", "{:.1f}", None),
    ("conc", "agg_tps", "concurrent: aggregate completion tok/s", "{:.1f}", "higher"),
    ("conc", "latency_s_mean", "concurrent: latency / request (mean, s)", "{:.2f}", "lower"),
    ("conc", "ttft_ms_median", "concurrent: TTFT median incl. queueing (ms)", "{:.0f}", "lower"),
    ("conc", "ttft_ms_max", "concurrent: TTFT max incl. queueing (ms)", "{:.0f}", "lower"),
    ("rss", "peak_rss_mib", "peak RSS (VmHWM, MiB)", "{:.1f}", "lower"),
]


def fmt(v, f):
    if v is None:
        return "-"
    if f == "{:d}":
        return str(int(v))
    return f.format(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lore", required=True, help="HOST:PORT of lore serve")
    ap.add_argument("--lore-pid", type=int, required=True)
    ap.add_argument("--peer", required=True, help="HOST:PORT of the llama.cpp server")
    ap.add_argument("--peer-pid", type=int, required=True)
    ap.add_argument("--peer-model", default="smollm2")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--per-client", type=int, default=4)
    ap.add_argument("--repeat-penalty", type=float, default=1.1)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--info", default="", help="a JSON object of facts to carry into the report")
    a = ap.parse_args()
    if a.runs < 1 or a.clients < 1 or a.per_client < 1 or a.max_tokens < 2:
        sys.exit("bench-serve: --runs, --clients, --per-client must be >= 1, --max-tokens >= 2")

    lore = Server("lore", a.lore, a.lore_pid, "default", {})
    peer = Server("llama.cpp", a.peer, a.peer_pid, a.peer_model,
                  {"repeat_penalty": a.repeat_penalty})
    servers = [lore, peer]
    pids = [a.lore_pid, a.peer_pid]
    log = (lambda *m: print(*m, file=sys.stderr)) if a.json else print

    loadavg_before = open("/proc/loadavg").read().split()[:3]
    phases = []
    for s in servers:
        r = s.chat(WARMUP, a.max_tokens)
        if r["error"]:
            sys.exit(f"bench-serve: {s.name} warm-up failed: {r['error']}")
        log(f"{s.name}: warm-up done ({r['tokens']} tokens, {r['total_s']:.2f} s)")

    with Phase("sequential (both, interleaved)", pids) as ph:
        seq = sequential(servers, a.runs, a.max_tokens)
    phases.append(ph.summary())
    log(f"sequential: {a.runs} requests per server done in {ph.wall:.1f} s")

    conc = {}
    for s in servers:
        with Phase(f"concurrent ({s.name})", pids) as ph:
            rs, wall = concurrent(s, a.clients, a.per_client, a.max_tokens, a.runs)
        phases.append(ph.summary())
        conc[s.name] = (rs, wall)
        log(f"concurrent {s.name}: {a.clients} x {a.per_client} requests in {wall:.1f} s")

    rss = {}
    for s in servers:
        hwm, cur = vm_kib(s.pid, "VmHWM"), vm_kib(s.pid, "VmRSS")
        rss[s.name] = {"peak_rss_mib": hwm / 1024 if hwm else None,
                       "rss_now_mib": cur / 1024 if cur else None}
    loadavg_after = open("/proc/loadavg").read().split()[:3]

    summary = {s.name: {"seq": seq_summary(seq[s.name]),
                        "conc": conc_summary(*conc[s.name]),
                        "rss": rss[s.name]} for s in servers}

    # Same answers? Greedy on both sides with the same penalty, so they may agree exactly.
    answers = []
    for rl, rp in zip(seq["lore"], seq["llama.cpp"]):
        if rl["error"] or rp["error"]:
            continue
        p = shared_prefix(rl["text"], rp["text"])
        answers.append({"prompt_index": rl["prompt_index"], "identical": rl["text"] == rp["text"],
                        "shared_prefix_chars": p, "lore_tokens": rl["tokens"],
                        "llama_tokens": rp["tokens"], "lore": rl["text"], "llama.cpp": rp["text"]})

    rows = []
    for sec, key, label, f, better in ROWS:
        vl = summary["lore"][sec].get(key)
        vp = summary["llama.cpp"][sec].get(key)
        ratio = vl / vp if isinstance(vl, (int, float)) and isinstance(vp, (int, float)) and vp else None
        verdict = ""
        if better and ratio is not None:
            if abs(ratio - 1) < 0.02:
                verdict = "about even"
            elif (ratio > 1) == (better == "higher"):
                verdict = "lore better"
            else:
                verdict = "llama.cpp better"
        rows.append({"metric": label, "key": f"{sec}.{key}", "lore": vl, "llama.cpp": vp,
                     "ratio_lore_over_llama": ratio, "better": better, "verdict": verdict,
                     "fmt": f})

    errors = sum(summary[s][k]["errors"] for s in summary for k in ("seq", "conc"))
    info = json.loads(a.info) if a.info else {}
    report = {
        "config": {"runs": a.runs, "max_tokens": a.max_tokens, "clients": a.clients,
                   "per_client": a.per_client, "repeat_penalty": a.repeat_penalty,
                   "temperature": 0, **info},
        "load": {"loadavg_before": loadavg_before, "loadavg_after": loadavg_after,
                 "cpus": os.cpu_count(), "phases": phases},
        "summary": summary,
        "table": [{k: v for k, v in r.items() if k != "fmt"} for r in rows],
        "answers": answers,
        "errors": errors,
    }
    if a.json:
        print(json.dumps(report, indent=1))
        return 1 if errors else 0

    print()
    print(f"load average before: {' '.join(loadavg_before)}; after: {' '.join(loadavg_after)}"
          f" ({os.cpu_count()} CPUs)")
    for p in phases:
        flag = "  <-- BUSY: figures unreliable" if p["others_pct_of_all_cpus"] > 10 else ""
        print(f"  {p['phase']}: {p['wall_s']} s; other processes used {p['others_cpu_s']} CPU-s"
              f" = {p['others_pct_of_all_cpus']}% of all CPUs{flag}")
    print()
    w = max(len(r["metric"]) for r in rows)
    print(f"{'metric':<{w}}  {'lore':>10}  {'llama.cpp':>10}  {'lore/llama':>10}  {'better':>6}  verdict")
    print("-" * (w + 60))
    for r in rows:
        ratio = "-" if r["ratio_lore_over_llama"] is None else f"{r['ratio_lore_over_llama']:.2f}"
        print(f"{r['metric']:<{w}}  {fmt(r['lore'], r['fmt']):>10}  {fmt(r['llama.cpp'], r['fmt']):>10}"
              f"  {ratio:>10}  {r['better'] or '':>6}  {r['verdict']}")
    print()
    for s in servers:
        srcs = sorted(set(summary[s.name]["seq"]["token_sources"]) | set(summary[s.name]["conc"]["token_sources"]))
        print(f"{s.name}: completion tokens counted from {', '.join(srcs) or '-'};"
              f" RSS now {fmt(rss[s.name]['rss_now_mib'], '{:.1f}')} MiB")
    same = sum(1 for x in answers if x["identical"])
    print(f"answers (sequential phase): identical on {same} of {len(answers)} prompts")
    for x in answers:
        if not x["identical"]:
            i = x["shared_prefix_chars"]
            print(f"  prompt {x['prompt_index']}: differ after {i} chars"
                  f" (lore {x['lore_tokens']} tokens, llama.cpp {x['llama_tokens']}):"
                  f" lore {x['lore'][i:i + 40]!r} vs llama.cpp {x['llama.cpp'][i:i + 40]!r}")
    if errors:
        print(f"ERRORS: {errors} failed requests (see above)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
