#!/usr/bin/env python3
"""Build a corpus of real text files from the data packaged in the llamafactory sdist.

Where the data comes from: the source tarball of llamafactory 0.9.5 on PyPI
(`pip download --no-deps --no-binary :all: llamafactory==0.9.5`, sha256
1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f); its `data/` folder holds
  - wiki_demo.txt       30 Wikipedia articles, one per line, no titles (CC BY-SA),
  - c4_demo.jsonl       300 web pages from C4 ({"text": ...}),
  - alpaca_en_demo.json 999 Alpaca instruction/input/output items. Alpaca-derived data is
                        NON-COMMERCIAL: use it for benchmarks and tests only, never ship it.

Usage:
  make_corpus.py DATA_DIR OUT_DIR                  # benchmark corpus, 1,329 files:
        OUT_DIR/wiki/<slug>.md, OUT_DIR/c4/c4-NNNN.txt, OUT_DIR/alpaca/alpaca-NNNN.md
  make_corpus.py DATA_DIR OUT_DIR --wiki-only --max-article-bytes 40000
        # only the 30 articles, flat in OUT_DIR (this is how examples/articles/ was made)

Output is deterministic (same input → byte-identical files), so benchmark runs are comparable.
Standard library only.
"""
import argparse
import json
import re
import sys
from pathlib import Path

# wiki_demo.txt carries no titles; these are the 30 articles in file order (checked by hand
# against each article's first sentence).
WIKI_TITLES = [
    "Anarchism", "Autism", "Albedo", "A", "Alabama", "Achilles", "Abraham Lincoln", "Aristotle",
    "An American in Paris", "Academy Award for Best Production Design", "Academy Awards",
    "Actrius", "Animalia (book)", "International Atomic Time", "Altruism", "Ayn Rand",
    "Alain Connes", "Allan Dwan", "Algeria", "List of Atlas Shrugged characters", "Anthropology",
    "Agricultural science", "Alchemy", "Alien", "Astronomer", "ASCII", "Austin", "Animation",
    "Apollo", "Andre Agassi",
]

# The dump glued paragraphs together ("...socialism.Humans lived..."). A sentence end right
# before a capital letter marks a lost break; restoring it gives chunkers real paragraphs.
# The lowercase/digit/closer before the period keeps "U.S.A." and decimals intact.
GLUED = re.compile(r"(?<=[a-z0-9)\]\"”'%][.!?])(?=[A-Z])")


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def paragraphs(text: str) -> str:
    return GLUED.sub("\n\n", text.strip())


def cap(text: str, max_bytes: int) -> str:
    """Keep whole paragraphs up to max_bytes of UTF-8 (0 = no cap)."""
    if not max_bytes or len(text.encode()) <= max_bytes:
        return text
    out, size = [], 0
    for para in text.split("\n\n"):
        n = len(para.encode()) + 2
        if out and size + n > max_bytes:
            break
        out.append(para)
        size += n
    return "\n\n".join(out)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def wiki(data: Path, out: Path, max_bytes: int) -> int:
    lines = [l for l in (data / "wiki_demo.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
    if len(lines) != len(WIKI_TITLES):
        sys.exit(f"expected {len(WIKI_TITLES)} articles in wiki_demo.txt, found {len(lines)}")
    for title, line in zip(WIKI_TITLES, lines):
        write(out / f"{slug(title)}.md", f"# {title}\n\n{cap(paragraphs(line), max_bytes)}")
    return len(lines)


def c4(data: Path, out: Path) -> int:
    n = 0
    with open(data / "c4_demo.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                n += 1
                write(out / f"c4-{n:04d}.txt", json.loads(line)["text"])
    return n


def alpaca(data: Path, out: Path) -> int:
    items = json.loads((data / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    for i, it in enumerate(items, 1):
        heading = " ".join(it["instruction"].split())  # a heading must be one line
        body = [f"# {heading}", it["input"].strip(), it["output"].strip()]
        write(out / f"alpaca-{i:04d}.md", "\n\n".join(p for p in body if p))
    return len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path, help="llamafactory-0.9.5/data")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--wiki-only", action="store_true", help="only the articles, flat in OUT_DIR")
    ap.add_argument("--max-article-bytes", type=int, default=0, help="cap each article (0 = none)")
    a = ap.parse_args()
    if a.wiki_only:
        n = wiki(a.data_dir, a.out_dir, a.max_article_bytes)
        print(f"{n} articles -> {a.out_dir}")
        return
    counts = {
        "wiki": wiki(a.data_dir, a.out_dir / "wiki", a.max_article_bytes),
        "c4": c4(a.data_dir, a.out_dir / "c4"),
        "alpaca": alpaca(a.data_dir, a.out_dir / "alpaca"),
    }
    print(f"{sum(counts.values())} files -> {a.out_dir} ({counts})")


if __name__ == "__main__":
    main()
