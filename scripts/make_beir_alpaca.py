#!/usr/bin/env python3
"""Build a BEIR-format retrieval benchmark from LLaMA-Factory's Alpaca demo data.

Each Alpaca record (instruction, input, output) becomes one document and one query:
  document d0001 ... = the record's `output` (title empty),
  query    q0001 ... = the record's `instruction`, plus "\\n" + `input` when input is non-empty,
  qrels: q<i> -> d<i>, score 1, and nothing else.
The labels are exact by construction: each query's own answer is its one relevant document.
Ids number the records by their index in the source file (1-based, 4 digits), so they stay
the same whatever is dropped.

Dropped, so that no query has a second, unlabelled answer in the corpus:
  * records whose output is shorter than 20 characters (after stripping whitespace);
  * records whose normalized output equals that of an earlier kept record;
  * records whose normalized instruction equals that of an earlier kept record.
  Normalized = Unicode NFKC, case-folded, runs of whitespace collapsed to one space, stripped.
  Each dropped record is counted under the first of these reasons that applies.

Source: data/alpaca_en_demo.json (999 records) inside the llamafactory 0.9.5 sdist on PyPI,
  pip download --no-deps --no-binary :all: llamafactory==0.9.5 -d DIR
sha256 1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f. The script reuses
~/.cache/lore/llamafactory-0.9.5.tar.gz when its hash matches, otherwise downloads it there
with this interpreter's pip; a hash mismatch is an error.
Alpaca-derived data is NON-COMMERCIAL (CC BY-NC 4.0): benchmarks only, never commit or ship it.

Usage:
  make_beir_alpaca.py OUTDIR [--as-files] [--tarball PATH] [--force]
Writes
  OUTDIR/corpus.jsonl    {"_id", "title", "text"} per line
  OUTDIR/queries.jsonl   {"_id", "text"} per line
  OUTDIR/qrels/test.tsv  header `query-id<TAB>corpus-id<TAB>score`
  OUTDIR/docs/<_id>.md   with --as-files: each document's text as a file, for file ingestion
Output is deterministic (same input, byte-identical files). Standard library only.
"""
import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from pathlib import Path

SDIST_NAME = "llamafactory-0.9.5.tar.gz"
SDIST_SHA256 = "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f"
MEMBER = "llamafactory-0.9.5/data/alpaca_en_demo.json"
EXPECTED_RECORDS = 999
CACHE_DIR = Path.home() / ".cache" / "lore"
MIN_OUTPUT_CHARS = 20
MIN_QUERIES = 500  # fewer would make the benchmark too noisy to compare runs with


def fail(msg: str) -> None:
    sys.exit(f"make_beir_alpaca.py: error: {msg}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sdist() -> Path:
    """The verified sdist: from the cache, or downloaded into it."""
    cached = CACHE_DIR / SDIST_NAME
    if cached.is_file():
        if sha256(cached) == SDIST_SHA256:
            print(f"using cached {cached}")
            return cached
        print(f"cached {cached} has the wrong sha256; downloading again", file=sys.stderr)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "llamafactory==0.9.5", "-d", tmp]
        print("running:", " ".join(cmd))
        if subprocess.run(cmd).returncode != 0:
            fail("pip download failed (see above)")
        got = Path(tmp) / SDIST_NAME
        if not got.is_file():
            fail(f"pip download did not produce {SDIST_NAME}: {sorted(p.name for p in Path(tmp).iterdir())}")
        digest = sha256(got)
        if digest != SDIST_SHA256:
            fail(f"{SDIST_NAME} sha256 is {digest}, expected {SDIST_SHA256}")
        shutil.move(str(got), cached)
    return cached


def load_records(tarball: Path) -> list[dict]:
    digest = sha256(tarball)
    if digest != SDIST_SHA256:
        fail(f"{tarball}: sha256 is {digest}, expected {SDIST_SHA256}")
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            member = tar.extractfile(MEMBER)
        except KeyError:
            fail(f"{tarball} has no {MEMBER}")
        records = json.load(member)
    if len(records) != EXPECTED_RECORDS:
        fail(f"{MEMBER}: expected {EXPECTED_RECORDS} records, found {len(records)}")
    for i, r in enumerate(records):
        if not all(isinstance(r.get(k), str) for k in ("instruction", "input", "output")):
            fail(f"{MEMBER}: record {i} lacks a string instruction/input/output: {r!r}")
    return records


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def select(records: list[dict]) -> tuple[list[int], dict[str, int]]:
    """Indices of the kept records, and the number dropped for each reason."""
    kept: list[int] = []
    dropped = {"output shorter than 20 chars": 0, "duplicate output": 0, "duplicate instruction": 0}
    outputs: set[str] = set()
    instructions: set[str] = set()
    for i, r in enumerate(records):
        out, ins = normalize(r["output"]), normalize(r["instruction"])
        if len(r["output"].strip()) < MIN_OUTPUT_CHARS:
            dropped["output shorter than 20 chars"] += 1
        elif out in outputs:
            dropped["duplicate output"] += 1
        elif ins in instructions:
            dropped["duplicate instruction"] += 1
        else:
            kept.append(i)
            outputs.add(out)
            instructions.add(ins)
    return kept, dropped


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path, help="folder to write the benchmark into")
    parser.add_argument("--as-files", action="store_true",
                        help="also write each document as OUTDIR/docs/<_id>.md")
    parser.add_argument("--tarball", type=Path,
                        help=f"use this {SDIST_NAME} (hash checked) instead of the cache")
    parser.add_argument("--force", action="store_true",
                        help="replace what an earlier run wrote in OUTDIR")
    args = parser.parse_args()

    ours = [args.outdir / n for n in ("corpus.jsonl", "queries.jsonl", "qrels", "docs")]
    if any(p.exists() for p in ours):
        if not args.force:
            fail(f"{args.outdir} already holds a benchmark; pass --force to replace it")
        for p in ours:  # only what this script writes, so a stale docs/ never lingers
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    records = load_records(args.tarball or sdist())
    kept, dropped = select(records)
    if len(kept) < MIN_QUERIES:
        fail(f"only {len(kept)} queries kept, fewer than {MIN_QUERIES}")

    corpus, queries, qrels = [], [], []
    for i in kept:
        r = records[i]
        doc_id, query_id = f"d{i + 1:04d}", f"q{i + 1:04d}"
        query = r["instruction"].strip()
        if r["input"].strip():
            query += "\n" + r["input"].strip()
        corpus.append({"_id": doc_id, "title": "", "text": r["output"].strip()})
        queries.append({"_id": query_id, "text": query})
        qrels.append(f"{query_id}\t{doc_id}\t1\n")

    (args.outdir / "qrels").mkdir(parents=True, exist_ok=True)
    write_jsonl(args.outdir / "corpus.jsonl", corpus)
    write_jsonl(args.outdir / "queries.jsonl", queries)
    with (args.outdir / "qrels" / "test.tsv").open("w", encoding="utf-8", newline="\n") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(qrels)
    if args.as_files:
        docs = args.outdir / "docs"
        docs.mkdir()
        for doc in corpus:
            (docs / f"{doc['_id']}.md").write_text(doc["text"] + "\n", encoding="utf-8")

    print(f"records: {len(records)}, kept: {len(kept)}, dropped: {len(records) - len(kept)}")
    for reason, n in dropped.items():
        print(f"  dropped, {reason}: {n}")
    print(f"wrote {len(corpus)} documents, {len(queries)} queries, {len(qrels)} qrels to {args.outdir}"
          + (f" (and {len(corpus)} files in docs/)" if args.as_files else ""))


if __name__ == "__main__":
    main()
