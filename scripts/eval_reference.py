#!/usr/bin/env python3
"""Reference retrieval metrics for lore's evaluator, computed with pytrec_eval (and ranx).

lore's own metric code (crate `retrieve`) is tested against numbers from this script, which
wraps trec_eval, the implementation the IR literature and BEIR report with. It is a tool for
making reference files, never part of the tests themselves.

Usage:
    eval_reference.py --run RUN.trec --qrels QRELS.tsv --output OUT.json

Setup (outside the repository):
    python3 -m venv /work/venv-eval
    /work/venv-eval/bin/pip install pytrec-eval-terrier ranx   # ranx is optional
    /work/venv-eval/bin/python scripts/eval_reference.py --run ... --qrels ... --output ...

Inputs
  RUN    TREC run file, one line per retrieved doc: `qid Q0 docid rank score tag`, whitespace
         separated. The rank column is ignored (trec_eval ignores it too: see "Ordering").
         A docid twice for one query is an error (trec_eval refuses it: "duplicate docs").
  QRELS  BEIR format: tab separated, header `query-id<TAB>corpus-id<TAB>score`, integer scores.

Conventions (applied identically to pytrec_eval and ranx)
  * Relevant means qrels score > 0 (trec_eval's default relevance_level 1). nDCG uses the
    graded score as the gain, as-is (trec_eval's ndcg_cut: linear gain, log2(rank+1) discount,
    ideal ranking built from all qrels of the query).
  * The evaluated queries are all queries in QRELS, N of them, and every mean divides by N.
    A query in QRELS with no run lines scores 0 on every metric, exactly as if the run held
    an empty ranking for it. That is what BEIR reports in practice: its retrievers return
    an entry (maybe empty) for every query, and EvaluateRetrieval.evaluate averages over the
    queries pytrec_eval scored (beir/retrieval/evaluation.py divides by len(scores)). A
    query whose judgements are all 0 scores 0 (trec_eval's value when nothing is relevant)
    and also counts. Queries in RUN that are not in QRELS are ignored (trec_eval and
    pytrec_eval skip them too); the printout counts them. Unlike BEIR's evaluate(), no
    doc is dropped for having the same id as its query.
  * Metrics: nDCG@10 = `ndcg_cut_10`, Recall@10 = `recall_10`, Recall@100 = `recall_100`,
    MRR@10 = `recip_rank` on the run truncated to each query's top 10 (recip_rank alone has
    no cutoff, so the truncation happens here, after the ordering below).

Ordering (checked in the source, see below): trec_eval re-sorts every query's results by
score descending, then by docid descending (C `strcmp`, i.e. byte order of the UTF-8
docid), and only then assigns ranks; the run's rank column is never read. Sources:
  * usnistgov/trec_eval form_res_rels.c, `te_form_res_rels`: "Sort results by sim, breaking
    ties lexicographically using docno", `qsort(..., comp_sim_docno)`, where
    `comp_sim_docno` returns -1 if p1->sim > p2->sim, 1 if smaller, else
    `strcmp(p2->docno, p1->docno)` (arguments swapped: docid descending). sim is a double.
  * terrierteam/pytrec_eval src/pytrec_eval.cpp: the run dict is copied with the score as a
    double and pre-sorted (score desc, docid asc) by `query_document_pair_compare`, but
    every measure goes through te_form_res_rels, whose qsort re-establishes the order above.
  The MRR@10 truncation below uses the same key, so the top 10 kept are exactly trec_eval's
  top 10. Python compares str by code point, which is the same order as strcmp on UTF-8.

ranx (if installed) orders each query with numpy's argsort of the negated scores, which
does not define an order among equal scores; on runs with ties at the cutoffs or around
the relevant docs, ranx can differ from trec_eval. The JSON reports the largest per-query
absolute difference for each metric so such a difference is visible, not hidden. To tell
tie-breaking from a real disagreement, ranx is run a second time on the same rankings with
the ties broken in trec_eval's order (scores replaced by n, n-1, ..., 1); that difference is
reported as "ranx_max_abs_diff_untied" and the script fails if it exceeds 1e-9.

Output JSON:
  {"tool": "pytrec_eval <version>", "queries": N,
   "mean": {"ndcg@10", "recall@10", "recall@100", "mrr@10"},
   "per_query": {qid: {same four}},
   "ranx_mean": {...} | null, "ranx_max_abs_diff": {...} | null,
   "ranx_max_abs_diff_untied": {...} | null}
Keys are sorted and floats written in full (Python's repr), so the file is reproducible.
"""
import argparse
import json
import math
import sys
import warnings
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

import pytrec_eval

METRICS = ["ndcg@10", "recall@10", "recall@100", "mrr@10"]
# Our metric name -> pytrec_eval's per-query key (the measure requested is in TREC_MEASURES).
TREC_KEYS = {"ndcg@10": "ndcg_cut_10", "recall@10": "recall_10", "recall@100": "recall_100"}
TREC_MEASURES = {"ndcg_cut.10", "recall.10,100"}
MRR_CUTOFF = 10


def fail(msg: str) -> None:
    sys.exit(f"eval_reference.py: error: {msg}")


def read_run(path: Path) -> dict[str, dict[str, float]]:
    """qid -> {docid: score}. Fails on malformed lines, bad scores and duplicate docids."""
    run: dict[str, dict[str, float]] = defaultdict(dict)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 6:
                fail(f"{path}:{n}: expected 6 fields `qid Q0 docid rank score tag`, got {len(fields)}")
            qid, _, docid, _, score_text, _ = fields
            try:
                score = float(score_text)
            except ValueError:
                fail(f"{path}:{n}: score {score_text!r} is not a number")
            if not math.isfinite(score):
                fail(f"{path}:{n}: score {score_text!r} is not finite")
            if docid in run[qid]:
                fail(f"{path}:{n}: docid {docid!r} appears twice for query {qid!r}")
            run[qid][docid] = score
    return dict(run)


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """qid -> {docid: grade}, from a BEIR qrels TSV with its header line."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header != ["query-id", "corpus-id", "score"]:
            fail(f"{path}:1: expected header 'query-id<TAB>corpus-id<TAB>score', got {header}")
        for n, line in enumerate(f, 2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                fail(f"{path}:{n}: expected 3 tab-separated fields, got {len(fields)}")
            qid, docid, grade_text = fields
            try:
                grade = int(grade_text)
            except ValueError:
                fail(f"{path}:{n}: score {grade_text!r} is not an integer")
            if docid in qrels[qid]:
                fail(f"{path}:{n}: docid {docid!r} judged twice for query {qid!r}")
            qrels[qid][docid] = grade
    return dict(qrels)


def trec_top(docs: dict[str, float], k: int) -> dict[str, float]:
    """The first k docs in trec_eval's order: score descending, then docid descending."""
    ranked = sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return dict(ranked[:k])


def with_pytrec_eval(qrels, run, qids) -> dict[str, dict[str, float]]:
    full = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)
    top = {qid: trec_top(docs, MRR_CUTOFF) for qid, docs in run.items()}
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top)
    out = {}
    for qid in qids:
        if qid not in run:  # no run lines: pytrec_eval returns nothing for it; BEIR counts 0
            out[qid] = {m: 0.0 for m in METRICS}
            continue
        scores = {m: full[qid][key] for m, key in TREC_KEYS.items()}
        scores["mrr@10"] = mrr[qid]["recip_rank"]
        out[qid] = scores
    return out


def untied(run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The same rankings with ties broken in trec_eval's order: scores become n, n-1, ..., 1."""
    out = {}
    for qid, docs in run.items():
        ranked = trec_top(docs, len(docs))
        out[qid] = {docid: float(len(ranked) - i) for i, docid in enumerate(ranked)}
    return out


def ranx_available() -> bool:
    try:
        import ranx  # noqa: F401
    except ImportError:
        print("ranx not installed: skipping the cross-check", file=sys.stderr)
        return False
    return True


def with_ranx(qrels, run, qids):
    """Per-query scores from ranx (which must be installed)."""
    from ranx import Qrels, Run, evaluate

    # ranx hashes docids to uint64 and its nDCG casts them to int64; numba warns about the
    # cast on every call. Harmless for equality tests on hashes, so silence only that one.
    warnings.filterwarnings("ignore", message="unsafe cast from uint64 to int64")
    # The same query set as pytrec_eval: queries missing from the run get an empty ranking
    # (make_comparable), so they score 0 there too; run queries outside qrels are dropped.
    r_qrels = Qrels(qrels)
    r_run = Run({qid: run[qid] for qid in qids if qid in run}).make_comparable(r_qrels)
    # ranx stores each query's score on the Run under its qid, so no reliance on array order.
    evaluate(r_qrels, r_run, METRICS, save_results_in_run=True)
    return {qid: {m: float(r_run.scores[m][qid]) for m in METRICS} for qid in r_run.get_query_ids()}


def mean(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: sum(q[m] for q in per_query.values()) / len(per_query) for m in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="TREC run file")
    parser.add_argument("--qrels", type=Path, required=True, help="BEIR qrels TSV with header")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    run = read_run(args.run)
    qrels = read_qrels(args.qrels)
    qids = sorted(qrels)
    if not qids:
        fail(f"{args.qrels}: no judgements")
    unjudgeable = sum(1 for judged in qrels.values() if all(g <= 0 for g in judged.values()))
    ignored = sorted(q for q in run if q not in qrels)
    missing = [q for q in qids if q not in run]

    per_query = with_pytrec_eval(qrels, run, qids)
    ranx_mean = ranx_diff = ranx_diff_untied = None
    if ranx_available():
        def max_diff(other):
            if set(other) != set(per_query):
                fail("ranx scored a different set of queries than pytrec_eval")
            return {m: max(abs(per_query[q][m] - other[q][m]) for q in qids) for m in METRICS}

        ranx_per_query = with_ranx(qrels, run, qids)
        ranx_mean = mean(ranx_per_query)
        ranx_diff = max_diff(ranx_per_query)
        # The same run with its ties broken the trec_eval way first: any difference left here
        # is a real disagreement, not tie-breaking, so fail loudly.
        ranx_diff_untied = max_diff(with_ranx(qrels, untied(run), qids))
        if max(ranx_diff_untied.values()) > 1e-9:
            fail(f"ranx and pytrec_eval disagree on a run without ties: {ranx_diff_untied}")

    result = {
        "tool": f"pytrec_eval {version('pytrec-eval-terrier')}",
        "queries": len(qids),
        "mean": mean(per_query),
        "per_query": per_query,
        "ranx_mean": ranx_mean,
        "ranx_max_abs_diff": ranx_diff,
        # Extra key: the same comparison after breaking ties in trec_eval's order (always ~0).
        "ranx_max_abs_diff_untied": ranx_diff_untied,
    }
    args.output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    print(f"queries evaluated: {len(qids)} (of which {len(missing)} without run lines, scored 0)")
    print(f"run queries not in qrels, ignored: {len(ignored)} {ignored[:5]}")
    print(f"qrels queries with no relevant doc (scored 0, counted): {unjudgeable}")
    for m in METRICS:
        extra = ""
        if ranx_mean is not None:
            extra = (f"  ranx {ranx_mean[m]:.6f}  max |diff| {ranx_diff[m]:.3g}"
                     f"  (ties pre-broken: {ranx_diff_untied[m]:.3g})")
        print(f"{m:<11} {result['mean'][m]:.6f}{extra}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
