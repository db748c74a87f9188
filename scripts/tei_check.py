#!/usr/bin/env python3
"""Compatibility check of `lore serve`'s TEI routes with a real TEI client: `huggingface_hub`'s
`InferenceClient`, the client Text Embeddings Inference documents and the one LangChain's
Hugging Face embeddings wrap. (LangChain's `HuggingFaceEndpointEmbeddings` 1.2 refuses a URL
for `model`, so it can only reach the Hugging Face hub, not a TEI server of one's own.)

    .venv/bin/pip install -r scripts/requirements-clients.txt
    .venv/bin/python scripts/tei_check.py --url http://127.0.0.1:PORT --api-key KEY \
        --expect-embeddings FILE.json

FILE.json: {"texts": [...], "embeddings": [[...], ...]}, the vectors `lore embed --json` gave;
the server's must match them within 1e-5 per element. Prints "ok: ..." per check; on the first
failure prints "FAIL: ..." and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from check_support import CheckFailed, ok, require

try:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"FAIL: a TEI client is not installed ({e}): pip install -r scripts/requirements-clients.txt")


def close(got: list[float], want: list[float], what: str) -> None:
    require(len(got) == len(want), f"{what}: {len(got)} dimensions, expected {len(want)}")
    worst = max(abs(a - b) for a, b in zip(got, want))
    require(worst < 1e-5, f"{what}: differs from `lore embed` by {worst}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--expect-embeddings", required=True)
    args = parser.parse_args()
    expected = json.load(open(args.expect_embeddings))
    texts, vectors = expected["texts"], expected["embeddings"]
    endpoint = args.url.rstrip("/") + "/embed"
    try:
        client = InferenceClient(model=endpoint, token=args.api_key)
        for i, text in enumerate(texts):
            array = client.feature_extraction(text)
            close([float(x) for x in array.reshape(-1)], vectors[i], f"feature_extraction({i})")
        ok(f"InferenceClient.feature_extraction: {len(texts)} vectors equal to lore embed's, shape {tuple(array.shape)}")
        array = client.feature_extraction(texts)
        require(array.shape[0] == len(texts), f"a list of {len(texts)} texts gave shape {array.shape}")
        for i, want in enumerate(vectors):
            close([float(x) for x in array[i]], want, f"feature_extraction(list)[{i}]")
        ok("InferenceClient.feature_extraction on a list")

        # Over-long input: refused unless the client asks to truncate, as TEI does.
        long_text = "word " * 2000
        try:
            client.feature_extraction(long_text)
            raise CheckFailed("an input past the model's window was embedded without truncate")
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            require(status == 413, f"over-long input: status {status}, expected 413")
            ok("an over-long input is refused with 413 (TEI's Validation)")
        array = client.feature_extraction(long_text, truncate=True)
        require(array.reshape(-1).shape[0] == len(vectors[0]), "truncated input: wrong dimension")
        ok("truncate=True embeds the window's start")

        bad = InferenceClient(model=endpoint, token="wrong-key")
        try:
            bad.feature_extraction("x")
            raise CheckFailed("a wrong key was accepted")
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            require(status == 401, f"wrong key: status {status}, expected 401")
            ok("a wrong key gets 401")
    except CheckFailed as e:
        print(f"FAIL: {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
