#!/usr/bin/env python3
"""Dequantize a llama-arch GGUF (e.g. SmolLM2-135M-Instruct Q4_1) into a float32 Hugging Face folder.

An independent cross-check of `lore finetune export`: it uses only the `gguf` Python package
(GGUFReader + gguf.quants.dequantize), numpy, safetensors and `tokenizers`, none of lore's code.

Output folder:
  config.json            model_type llama, LlamaForCausalLM, tied embeddings when the GGUF has
                         no `output.weight`
  model.safetensors      F32, HF tensor names, Q/K rows put back in HF order (llama.cpp permutes
                         them for llama-arch GGUFs; see shared/MODELS.md)
  tokenizer.json         copied from the GGUF's folder when one is there, otherwise rebuilt from
                         the GGUF's byte-level BPE metadata (tokens, merges, token types, `pre`)
  tokenizer_config.json  bos/eos/pad names from the GGUF's ids, chat template when the GGUF has one
  generation_config.json bos/eos ids

Usage:
  /work/venv-peft/bin/python scripts/gguf_to_hf.py MODEL.gguf OUT_DIR
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf import GGUFReader, GGUFValueType
    from gguf.quants import dequantize
except ImportError:  # pragma: no cover
    sys.exit("needs the `gguf` package: pip install gguf")


def field_value(reader, key, default=None):
    """A metadata value as a Python scalar, string or list."""
    f = reader.fields.get(key)
    if f is None:
        return default
    if hasattr(f, "contents"):  # gguf >= 0.10
        return f.contents()
    vt = f.types[0]
    if vt == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if vt == GGUFValueType.ARRAY:
        inner = f.types[1] if len(f.types) > 1 else None
        if inner == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    return f.parts[f.data[0]].tolist()[0]


def unpermute(w, heads):
    """Undo llama.cpp's Q/K row permutation: (heads, hd/2, 2, in) -> (heads, 2, hd/2, in)."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).transpose(0, 2, 1, 3).reshape(out, inp)


NAME_MAP = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def hf_name(name):
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in NAME_MAP:
        return f"model.layers.{parts[1]}.{NAME_MAP[parts[2]]}.{parts[3]}"
    return None


def tensor_f32(t):
    """Dequantized tensor in numpy (row-major, HF) shape: reversed GGUF dims."""
    shape = tuple(int(d) for d in reversed(list(t.shape)))
    if t.tensor_type in (gguf.GGMLQuantizationType.F32,):
        arr = np.asarray(t.data, dtype=np.float32)
    elif t.tensor_type in (gguf.GGMLQuantizationType.F16,):
        arr = np.asarray(t.data, dtype=np.float16).astype(np.float32)
    else:
        arr = dequantize(t.data, t.tensor_type).astype(np.float32)
    return np.ascontiguousarray(arr.reshape(shape))


def build_tokenizer(reader):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = field_value(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        sys.exit(f"tokenizer model {model!r} not supported (only byte-level BPE `gpt2`)")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field_value(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = field_value(reader, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("default", "gpt2"):
        tok.pre_tokenizer = byte_level
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        sys.exit(f"pre-tokenizer {pre!r} not supported by this converter")
    tok.decoder = decoders.ByteLevel()
    types = field_value(reader, "tokenizer.ggml.token_type") or []
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty in (3, 4)]
    tok.add_special_tokens(special)
    return tok, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("out")
    args = ap.parse_args()
    src = Path(args.gguf)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(str(src))
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"architecture {arch!r}: only llama is handled (its Q/K rows are permuted)")
    a = lambda k, d=None: field_value(reader, f"{arch}.{k}", d)  # noqa: E731
    hidden = int(a("embedding_length"))
    heads = int(a("attention.head_count"))
    kv_heads = int(a("attention.head_count_kv", heads))
    n_layers = int(a("block_count"))

    from safetensors.numpy import save_file

    tensors = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            print(f"skipping tensor {t.name}", file=sys.stderr)
            continue
        w = tensor_f32(t)
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute(w, heads)
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute(w, kv_heads)
        tensors[name] = np.ascontiguousarray(w)
    tied = "lm_head.weight" not in tensors
    vocab_size = tensors["model.embed_tokens.weight"].shape[0]
    intermediate = tensors["model.layers.0.mlp.up_proj.weight"].shape[0]
    head_dim = hidden // heads
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    bos = field_value(reader, "tokenizer.ggml.bos_token_id")
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")
    pad = field_value(reader, "tokenizer.ggml.padding_token_id", eos)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(intermediate),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(a("context_length", 2048)),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(a("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "vocab_size": int(vocab_size),
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos, "eos_token_id": eos}, indent=2) + "\n")

    tok_src = src.parent / "tokenizer.json"
    if tok_src.exists():
        shutil.copy(tok_src, out / "tokenizer.json")
        from tokenizers import Tokenizer
        names = None
        tok_note = f"copied {tok_src}"
        tk = Tokenizer.from_file(str(tok_src))
        id_to_token = tk.id_to_token
    else:
        tk, names = build_tokenizer(reader)
        tk.save(str(out / "tokenizer.json"))
        id_to_token = lambda i: names[i]  # noqa: E731
        tok_note = f"no tokenizer.json next to {src.name}: rebuilt from the GGUF's BPE metadata"
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config["max_position_embeddings"],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    for key, idx in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad)):
        if idx is not None:
            tok_cfg[key] = id_to_token(int(idx))
    template = field_value(reader, "tokenizer.chat_template")
    if template:
        tok_cfg["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")

    print(json.dumps({
        "out": str(out), "tensors": len(tensors), "tied": tied, "layers": n_layers,
        "hidden": hidden, "heads": heads, "kv_heads": kv_heads, "vocab": int(vocab_size),
        "tokenizer": tok_note, "bos": bos, "eos": eos,
    }))


if __name__ == "__main__":
    main()
