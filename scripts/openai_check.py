#!/usr/bin/env python3
"""Compatibility check of `lore serve` with the official `openai` Python package.

    python3 -m venv .venv-clients && .venv-clients/bin/pip install -r scripts/requirements-clients.txt
    .venv-clients/bin/python scripts/openai_check.py --base-url http://127.0.0.1:PORT/v1 \
        --api-key KEY [--expect-embeddings FILE.json] [--timeout 300]

Prints "ok: ..." per check; on the first failure prints "FAIL: ..." and exits 1.

--expect-embeddings FILE: a JSON object {"texts": [...], "embeddings": [[...], ...]}, the texts
and the vectors `lore embed --json` gave for them; the server's vectors must match them within
1e-5 per element.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import struct
import sys

from check_support import CheckFailed, ok, require

try:
    import openai
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("FAIL: the `openai` package is not installed (pip install -r scripts/requirements-clients.txt)")

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]
EMBED_TEXTS = [
    "Abraham Lincoln was born in Kentucky.",
    "ASCII is a character encoding standard for electronic communication.",
    "Albedo is the fraction of sunlight that a surface reflects.",
]


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    require(len(a) == len(b), f"{len(a)} vectors vs {len(b)}")
    worst = 0.0
    for i, (u, v) in enumerate(zip(a, b)):
        require(len(u) == len(v), f"vector {i}: dimension {len(u)} vs {len(v)}")
        for x, y in zip(u, v):
            worst = max(worst, abs(float(x) - float(y)))
    return worst


def as_f32(v: list[float]) -> list[float]:
    """The float32 a JSON number stands for (the shortest decimal of an f32 read as an f64 is
    not always that f32's exact value)."""
    return list(struct.unpack(f"<{len(v)}f", struct.pack(f"<{len(v)}f", *v)))


def decode_base64(s: str) -> list[float]:
    raw = base64.b64decode(s)
    require(len(raw) % 4 == 0, f"base64 embedding of {len(raw)} bytes is not a whole number of float32s")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def check_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    require("default" in ids, f"GET /v1/models has no \"default\": {ids}")
    ok(f"models.list(): {ids}")


def check_chat(client: openai.OpenAI) -> str:
    r = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=24, temperature=0)
    require(len(r.choices) >= 1, f"no choices: {r}")
    choice = r.choices[0]
    content = choice.message.content
    require(bool(content), f"empty message content: {choice}")
    require(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason!r}")
    require(r.usage is not None, "no usage")
    require(r.usage.prompt_tokens > 0, f"usage.prompt_tokens = {r.usage.prompt_tokens}")
    require(r.usage.completion_tokens > 0, f"usage.completion_tokens = {r.usage.completion_tokens}")
    ok(
        f"chat.completions.create: {content!r} (finish_reason {choice.finish_reason}, "
        f"usage {r.usage.prompt_tokens}+{r.usage.completion_tokens}, model {r.model!r})"
    )
    return content


def check_chat_stream(client: openai.OpenAI, expected: str) -> None:
    stream = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=24, temperature=0, stream=True
    )
    pieces: list[str] = []
    chunks = 0
    finish_reason = None
    for chunk in stream:
        chunks += 1
        require(
            chunk.object == "chat.completion.chunk",
            f"chunk {chunks}: object {chunk.object!r}, expected 'chat.completion.chunk'",
        )
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason is not None:
                finish_reason = choice.finish_reason
    text = "".join(pieces)
    require(len(pieces) >= 2, f"only {len(pieces)} chunks with content (of {chunks}): {pieces}")
    require(finish_reason in ("stop", "length"), f"no final chunk with finish_reason (saw {finish_reason!r})")
    require(text == expected, f"streamed text differs from the plain answer:\n  stream: {text!r}\n  plain:  {expected!r}")
    ok(f"chat.completions.create(stream=True): {chunks} chunks, {len(pieces)} with content, equals the plain answer, finish_reason {finish_reason}")


def embed(client: openai.OpenAI, texts: list[str], **kwargs) -> list:
    r = client.embeddings.create(model="default", input=texts, **kwargs)
    require(len(r.data) == len(texts), f"{len(r.data)} embeddings for {len(texts)} inputs")
    data = sorted(r.data, key=lambda d: d.index)
    require([d.index for d in data] == list(range(len(texts))), f"indices {[d.index for d in r.data]}")
    return [d.embedding for d in data]


def check_embeddings(client: openai.OpenAI, expect_file: str | None) -> None:
    vectors = embed(client, EMBED_TEXTS, encoding_format="float")
    dims = {len(v) for v in vectors}
    require(len(dims) == 1, f"vectors of different dimensions: {sorted(dims)}")
    dim = dims.pop()
    require(dim > 0, "empty vectors")
    for i, v in enumerate(vectors):
        require(all(isinstance(x, float) for x in v), f"vector {i} is not a list of floats")
        n = norm(v)
        require(abs(n - 1.0) <= 1e-3, f"vector {i} has norm {n}, expected 1 within 1e-3")
    ok(f"embeddings.create(3 texts): 3 vectors of dimension {dim}, unit norm")

    # The client asks for base64 itself when no encoding_format is given, and decodes it.
    as_float32 = [as_f32(v) for v in vectors]
    implicit = embed(client, EMBED_TEXTS)
    d = max_abs_diff([as_f32(v) for v in implicit], as_float32)
    require(d == 0.0, f"base64 (decoded by the client) differs from float by up to {d}")
    ok("embeddings.create() without encoding_format (the client requests base64 and decodes it) equals float")

    # Explicit base64: the client hands back the string as it came.
    explicit = embed(client, EMBED_TEXTS, encoding_format="base64")
    require(all(isinstance(e, str) for e in explicit), f"encoding_format=base64 gave {type(explicit[0]).__name__}, not str")
    d = max_abs_diff([decode_base64(e) for e in explicit], as_float32)
    require(d == 0.0, f"explicit base64 (little-endian float32) differs from float by up to {d}")
    ok("embeddings.create(encoding_format='base64') decodes (little-endian float32) to the float vectors")

    if expect_file:
        with open(expect_file, encoding="utf-8") as f:
            expected = json.load(f)
        texts, reference = expected["texts"], expected["embeddings"]
        require(len(texts) == len(reference), f"{expect_file}: {len(texts)} texts but {len(reference)} embeddings")
        got = embed(client, texts, encoding_format="float")
        d = max_abs_diff(got, reference)
        require(d <= 1e-5, f"embeddings differ from {expect_file} by up to {d} (> 1e-5)")
        ok(f"embeddings of the {len(texts)} texts of {expect_file} match within 1e-5 (max abs diff {d:.2e})")


def check_wrong_key(base_url: str, timeout: float) -> None:
    bad = openai.OpenAI(base_url=base_url, api_key="wrong-key-for-lore-check", max_retries=0, timeout=timeout)
    try:
        bad.models.list()
    except openai.AuthenticationError as e:
        ok(f"a wrong API key raises AuthenticationError (HTTP {e.status_code}) on models.list()")
    except openai.APIStatusError as e:
        raise CheckFailed(f"a wrong API key raised {type(e).__name__} (HTTP {e.status_code}), not AuthenticationError: {e}")
    else:
        raise CheckFailed("a wrong API key was accepted by GET /v1/models")
    try:
        bad.chat.completions.create(model="default", messages=MESSAGES, max_tokens=4)
    except openai.AuthenticationError:
        ok("a wrong API key raises AuthenticationError on chat.completions.create")
    except openai.APIStatusError as e:
        raise CheckFailed(f"a wrong API key raised {type(e).__name__} (HTTP {e.status_code}), not AuthenticationError: {e}")
    else:
        raise CheckFailed("a wrong API key was accepted by POST /v1/chat/completions")


def check_unknown_model(client: openai.OpenAI) -> None:
    calls = {
        "chat.completions.create": lambda m: client.chat.completions.create(model=m, messages=MESSAGES, max_tokens=4),
        "embeddings.create": lambda m: client.embeddings.create(model=m, input=["hello"], encoding_format="float"),
    }
    for name, call in calls.items():
        try:
            call("no-such-model-for-lore-check")
        except (openai.NotFoundError, openai.BadRequestError) as e:
            ok(f"an unknown model on {name} raises {type(e).__name__} (HTTP {e.status_code}): {e.message}")
        except openai.APIStatusError as e:
            raise CheckFailed(f"an unknown model on {name} raised {type(e).__name__} (HTTP {e.status_code}): {e}")
        else:
            raise CheckFailed(f"an unknown model on {name} was accepted")


def check_json_mode(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Give the name and the birth year of Abraham Lincoln as a JSON object."}],
        max_tokens=200,
        temperature=0,
        response_format={"type": "json_object"},
    )
    choice = r.choices[0]
    require(choice.finish_reason == "stop", f"JSON mode ran out of tokens: {choice.message.content!r}")
    try:
        value = json.loads(choice.message.content)
    except json.JSONDecodeError as e:
        raise CheckFailed(f"response_format json_object gave text that is not JSON ({e}): {choice.message.content!r}")
    require(isinstance(value, dict), f"response_format json_object gave a {type(value).__name__}, not an object")
    ok(f"response_format json_object: json.loads gives an object: {choice.message.content!r}")


def check_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = r.choices[0]
    content = choice.logprobs.content if choice.logprobs else None
    require(bool(content), f"logprobs=True gave no logprobs: {choice}")
    require(len(content) == r.usage.completion_tokens, f"{len(content)} logprobs for {r.usage.completion_tokens} tokens")
    text = "".join(t.token for t in content)
    require(text == choice.message.content, f"the tokens {text!r} do not spell the answer {choice.message.content!r}")
    for t in content:
        require(t.logprob <= 0.0, f"logprob {t.logprob} > 0 for {t.token!r}")
        require(len(t.top_logprobs) == 3, f"{len(t.top_logprobs)} top_logprobs, asked for 3")
        tops = [a.logprob for a in t.top_logprobs]
        require(tops == sorted(tops, reverse=True), f"top_logprobs not in order: {tops}")
        # Greedy: the chosen token is the most likely one.
        require(t.top_logprobs[0].token == t.token, f"greedy chose {t.token!r}, not the top {t.top_logprobs[0].token!r}")
        require(bytes(t.bytes) == t.token.encode(), f"bytes {t.bytes} are not the token {t.token!r}")
    ok(f"logprobs: {len(content)} tokens spell the answer, each the top of its 3 alternatives")
    # Streamed, they come with the finishing chunk; a client appending each chunk's list
    # ends up with the same tokens.
    stream = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3, stream=True
    )
    streamed: list = []
    pieces: list[str] = []
    for chunk in stream:
        for c in chunk.choices:
            if c.delta is not None and c.delta.content:
                pieces.append(c.delta.content)
            if c.logprobs is not None and c.logprobs.content:
                streamed.extend(c.logprobs.content)
    require([t.token for t in streamed] == [t.token for t in content], "streamed logprobs differ from the plain ones")
    require("".join(pieces) == text, "the streamed text differs from the plain answer")
    ok(f"logprobs with stream=True: the same {len(streamed)} tokens")


def check_tools_refused(client: openai.OpenAI) -> None:
    try:
        client.chat.completions.create(
            model="default",
            messages=MESSAGES,
            max_tokens=4,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    except openai.BadRequestError as e:
        require(e.param == "tools", f"tools refused with param {e.param!r}, not 'tools'")
        ok(f"tools raises BadRequestError (HTTP 400), param {e.param!r}, code {e.code!r}")
    else:
        raise CheckFailed("tools were accepted; lore's models do not call tools")


def check_any_model(base_url: str, api_key: str, timeout: float) -> None:
    # A client configured for OpenAI's defaults, unchanged but for the URL.
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8, temperature=0)
    require(bool(r.choices[0].message.content), f"empty answer for gpt-4o-mini: {r}")
    e = client.embeddings.create(model="text-embedding-3-small", input=["hello"], encoding_format="float")
    require(len(e.data[0].embedding) > 0, "no embedding for text-embedding-3-small")
    ok(f"--accept-any-model: gpt-4o-mini answers {r.choices[0].message.content!r}, text-embedding-3-small embeds")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", required=True)
    p.add_argument("--expect-embeddings", metavar="FILE.json", help='{"texts": [...], "embeddings": [[...], ...]}')
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    p.add_argument("--accept-any-model", action="store_true",
                   help="the server runs with --accept-any-model: check OpenAI's model names work instead of 404")
    args = p.parse_args()

    print(f"openai {openai.__version__} against {args.base_url}", flush=True)
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=args.timeout)
    try:
        check_models(client)
        plain = check_chat(client)
        check_chat_stream(client, plain)
        check_embeddings(client, args.expect_embeddings)
        check_json_mode(client)
        check_logprobs(client)
        check_tools_refused(client)
        check_wrong_key(args.base_url, args.timeout)
        if args.accept_any_model:
            check_any_model(args.base_url, args.api_key, args.timeout)
        else:
            check_unknown_model(client)
    except CheckFailed as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    except openai.APIConnectionError as e:
        print(f"FAIL: cannot reach {args.base_url}: {e} ({e.__cause__!r})", file=sys.stderr)
        return 1
    except openai.APIStatusError as e:
        print(
            f"FAIL: {e.request.method} {e.request.url} answered HTTP {e.status_code} ({type(e).__name__}): {e.body!r}",
            file=sys.stderr,
        )
        return 1
    except openai.OpenAIError as e:
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
