"""Synthetic GGUF models for architectures no package ships (run through
scripts/make-synthetic, which pins gguf and numpy).

Each model is described by a dict in MODELS: its architecture, the vocab file
whose tokenizer it borrows, its shape and its RoPE scaling. Weights are drawn
from a seeded generator with scales chosen so that every layer changes the
residual stream as much as a trained one does (unit-variance projections),
attention is sharp (scores with a spread of several units), and the logits
are peaked, so that a wrong rotation, norm or head layout changes the
argmax instead of hiding in flat noise. Matrices are stored as Q8_0, norms
and RoPE factors as F32.

One model is scripted instead (qwen3-think-tiny): its layers barely touch the
residual stream and its output matrix maps each token of a script to the next,
a bigram table, so that greedy decoding writes a known reasoning answer; it
carries the real Qwen3 chat template and Qwen3's added tokens, for the tests of
reasoning and tool calls through the API.
"""
import math
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.environ.get("LAMPO_MODELS", os.path.join(ROOT, "models"))
OUT_DIR = os.path.join(MODELS_DIR, "synthetic")

# Qwen3's tokens beyond Qwen2's that its template writes, in the slots the
# Qwen2 vocabulary pads (user-defined tokens, as Qwen3's GGUFs mark them).
QWEN3_ADDED = {151657: "<tool_call>", 151658: "</tool_call>", 151665: "<tool_response>",
               151666: "</tool_response>", 151667: "<think>", 151668: "</think>"}

MODELS = {
    # Qwen3 dense: per-head Q/K RMSNorm, no QKV bias, NeoX rotation, a head
    # size (key_length) that is not width / heads, tied output.
    "qwen3-tiny": dict(arch="qwen3", vocab="qwen2", seed=3, n_embd=64, n_head=4, n_head_kv=2,
                       head_dim=64, n_ff=192, n_layer=3, ctx=40960, rope_base=1_000_000.0,
                       eps=1e-6, tied=True),
    # Llama 3.x: llama3-type RoPE scaling stored as the rope_freqs tensor
    # (factor 8, low/high frequency factors 1 and 4) over an original
    # context short enough that test prompts run past it; GQA 4:1; untied.
    "llama3-tiny": dict(arch="llama", vocab="llama-bpe", seed=31, n_embd=64, n_head=4, n_head_kv=1,
                        head_dim=32, n_ff=192, n_layer=3, ctx=131072, rope_base=500_000.0,
                        eps=1e-5, tied=False,
                        llama3_rope=dict(factor=8.0, low=1.0, high=4.0, original=128)),
    # Qwen3 with YaRN context extension (factor 4 over 128 positions), as
    # Qwen's long-context files ask for it in their metadata.
    "qwen3-yarn-tiny": dict(arch="qwen3", vocab="qwen2", seed=7, n_embd=64, n_head=4, n_head_kv=2,
                            head_dim=32, n_ff=192, n_layer=3, ctx=512, rope_base=10_000.0,
                            eps=1e-6, tied=True, yarn=dict(factor=4.0, original=128)),
    # Gemma 2: sliding-window attention on every other layer (a window
    # shorter than the test prompts), norms after attention and MLP, GELU,
    # scaled embeddings, tied output, and soft-capped attention scores and
    # logits. The logits cap is Gemma 2's 30 (the top logits here reach
    # past it); the scores' cap is 10 instead of 50, so that it bites on
    # these scores as it does on a trained model's. Large post-norm gains
    # let the layers, not the scaled input embedding, decide the next token.
    "gemma2-tiny": dict(arch="gemma2", vocab="llama-spm", seed=61, n_embd=64, n_head=4, n_head_kv=2,
                        head_dim=32, n_ff=192, n_layer=4, ctx=8192, rope_base=10_000.0,
                        eps=1e-6, tied=True, embd_std=1.0, post_norm_gains=(6.0, 10.0),
                        sliding_window=32, attn_softcap=10.0, final_softcap=30.0),
    # Phi-3/Phi-4-mini: fused QKV and gate/up matrices, rotation over 12 of
    # 16 head dimensions, LongRoPE's short and long factors and magnitude
    # factor over a 512-position original context, and the sliding window
    # the converter writes (ignored by llama.cpp, shorter than the prompts).
    "phi3-tiny": dict(arch="phi3", vocab="phi-3", seed=67, n_embd=64, n_head=4, n_head_kv=2,
                      head_dim=16, rope_dims=12, n_ff=192, n_layer=3, ctx=4096, rope_base=10_000.0,
                      eps=1e-5, tied=False, sliding_window=64,
                      longrope=dict(original=512, short=[1.0, 1.1, 1.3, 1.6, 2.0, 2.5],
                                    long=[1.0, 1.5, 3.0, 6.0, 12.0, 24.0])),
    # Qwen3 answering by script: after the generation prompt's newline it
    # writes "<think>Let me think.</think>\n\nParis<|im_end|>"; after "\n\n",
    # where Paris is not allowed (a grammar), "<tool_call>" or "{" come next.
    "qwen3-think-tiny": dict(arch="qwen3", vocab="qwen2", seed=11, n_embd=64, n_head=4, n_head_kv=2,
                             head_dim=16, n_ff=128, n_layer=2, ctx=4096, rope_base=1_000_000.0,
                             eps=1e-6, tied=False, template="Qwen-Qwen3-0.6B.jinja",
                             added_tokens=QWEN3_ADDED, eos=151645,
                             script=["Ċ", "<think>", "Let", "Ġme", "Ġthink", ".", "</think>", "ĊĊ",
                                     "Paris", "<|im_end|>"],
                             second=[("ĊĊ", "<tool_call>"), ("ĊĊ", "{")]),
    # Llama 3.1 as its instruct files are: the real Llama 3.1 chat template
    # (JSON tool calls), <|eot_id|> as the end token, <|eom_id|> and
    # <|python_tag|> where Llama 3.1 renamed reserved tokens.
    "llama31-tools-tiny": dict(arch="llama", vocab="llama-bpe", seed=41, n_embd=64, n_head=4, n_head_kv=1,
                               head_dim=16, n_ff=128, n_layer=2, ctx=8192, rope_base=500_000.0,
                               eps=1e-5, tied=True, template="meta-llama-Llama-3.1-8B-Instruct.jinja",
                               added_tokens={128008: "<|eom_id|>", 128010: "<|python_tag|>"},
                               eos=128009, eom=128008),
    # Mistral with a v3 tokenizer: the real Mistral Nemo chat template
    # ([TOOL_CALLS] lists), its control tokens appended to the Llama/Mistral
    # sentencepiece vocabulary.
    "mistral-tools-tiny": dict(arch="llama", vocab="llama-spm", seed=53, n_embd=64, n_head=4, n_head_kv=1,
                               head_dim=16, n_ff=128, n_layer=2, ctx=8192, rope_base=1_000_000.0,
                               eps=1e-5, tied=True, template="mistralai-Mistral-Nemo-Instruct-2407.jinja",
                               appended_tokens=["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                                                "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]),
    # Mistral with a v11+ tokenizer: the real Mistral Small 3.2 chat template
    # ([TOOL_CALLS]name[ARGS]{...}), its control tokens appended likewise.
    "mistral3-tools-tiny": dict(arch="llama", vocab="llama-spm", seed=59, n_embd=64, n_head=4, n_head_kv=1,
                                head_dim=16, n_ff=128, n_layer=2, ctx=8192, rope_base=1_000_000.0,
                                eps=1e-5, tied=True, template="Mistral-Small-3.2-24B-Instruct-2506.jinja",
                                appended_tokens=["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                                                 "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
                                                 "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[ARGS]", "[CALL_ID]",
                                                 "[TOOL_CONTENT]", "[IMG]"]),
}


# The low-bit formats llama.cpp quantizes to and gguf-py cannot: Lampo's own
# quantizers below write them (plain round-to-nearest with GGML's layouts;
# llama.cpp's quantizers search for better scales, which changes nothing
# about how the bytes are read).
LOWBIT = {
    "Q2_K": Q.Q2_K, "Q3_K": Q.Q3_K, "IQ4_NL": Q.IQ4_NL, "IQ4_XS": Q.IQ4_XS,
}
# How far (relative RMS) each format's round trip may be from the weights;
# a wrong bit layout lands far above (checked with gguf-py's own decoder).
LOWBIT_ERROR = {"Q2_K": 0.5, "Q3_K": 0.3, "IQ4_NL": 0.15, "IQ4_XS": 0.15}
for _fmt, _seed in (("Q2_K", 73), ("Q3_K", 79), ("IQ4_NL", 83), ("IQ4_XS", 89)):
    # Llama-shaped, wide enough for 256-value blocks; every matrix, the
    # embedding and output tables included, in the one format.
    MODELS[f"llama-{_fmt.lower().replace('_', '')}-tiny"] = dict(
        arch="llama", vocab="llama-spm", seed=_seed, n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
        n_ff=512, n_layer=2, ctx=4096, rope_base=10_000.0, eps=1e-5, tied=False, qtype=_fmt)

IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                      dtype=np.float32)


def _f16(a):
    """Per-block f16 fields as bytes, and the values they round to."""
    h = a.astype(np.float16)
    return h.view(np.uint8).reshape(len(a), 2), h.astype(np.float32)


def _signed_max(a, axis):
    """The element of largest magnitude along `axis`, with its sign."""
    idx = np.abs(a).argmax(axis=axis)
    return np.take_along_axis(a, np.expand_dims(idx, axis), axis).squeeze(axis)


def _safe(d):
    return np.where(d != 0, d, 1.0)


def _pack2(codes):
    """256 2-bit codes per block into 64 bytes: element 128h + 32j + l in
    bits 2j of byte 32h + l."""
    c = codes.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (c[:, :, 0] | c[:, :, 1] << 2 | c[:, :, 2] << 4 | c[:, :, 3] << 6).reshape(-1, 64)


def _nearest_level(v):
    out = np.empty(v.shape, dtype=np.uint8)
    flat, dst = v.reshape(-1), out.reshape(-1)
    for i in range(0, flat.size, 1 << 20):
        dst[i:i + (1 << 20)] = np.abs(flat[i:i + (1 << 20), None] - IQ4_LEVELS).argmin(1)
    return out


def _pack_nibbles(idx):
    """32 codes per group into 16 bytes: code j low nibble, j + 16 high."""
    i = idx.reshape(-1, 2, 16)
    return (i[:, 0] | i[:, 1] << 4).astype(np.uint8)


def quantize_lowbit(x, fmt):
    """Rows of `x` as GGML blocks of `fmt`, returned as (rows, row bytes) uint8."""
    rows = x.shape[0]
    if fmt == "IQ4_NL":
        b = x.reshape(-1, 32)
        d_bytes, d = _f16(_signed_max(b, 1) / -127.0)
        idx = _nearest_level(b / _safe(d)[:, None])
        out = np.concatenate([d_bytes, _pack_nibbles(idx)], axis=1)
        return out.reshape(rows, -1)
    b = x.reshape(-1, 256)
    nb = b.shape[0]
    if fmt == "Q2_K":
        s = b.reshape(nb, 16, 16)
        lo = np.minimum(s.min(2), 0.0)
        scale, mn = (s.max(2) - lo) / 3.0, -lo
        d_bytes, d = _f16(scale.max(1) / 15.0)
        m_bytes, dmin = _f16(mn.max(1) / 15.0)
        sc = np.clip(np.round(scale / _safe(d)[:, None]), 0, 15)
        m = np.clip(np.round(mn / _safe(dmin)[:, None]), 0, 15)
        step = d[:, None] * sc
        q = np.clip(np.round((s + (dmin[:, None] * m)[..., None]) / _safe(step)[..., None]), 0, 3)
        q = np.where(step[..., None] > 0, q, 0).reshape(nb, 256)
        scales = (sc.astype(np.uint8) | (m.astype(np.uint8) << 4))
        out = np.concatenate([scales, _pack2(q), d_bytes, m_bytes], axis=1)
    elif fmt == "Q3_K":
        s = b.reshape(nb, 16, 16)
        scale = _signed_max(s, 2) / -4.0
        d_bytes, d = _f16(_signed_max(scale, 1) / -32.0)
        sc = np.clip(np.round(scale / _safe(d)[:, None]), -32, 31)
        step = d[:, None] * sc
        q = np.clip(np.round(s / _safe(step)[..., None]), -4, 3)
        q = np.where(step[..., None] != 0, q, 0).reshape(nb, 256).astype(np.int32) + 4
        high, low = q >> 2, q & 3
        hmask = np.zeros((nb, 32), dtype=np.uint8)
        for k in range(8):
            hmask |= (high[:, 32 * k:32 * k + 32] << k).astype(np.uint8)
        ls = (sc + 32).astype(np.uint8)
        packed = np.zeros((nb, 12), dtype=np.uint8)
        for j in range(16):
            if j < 8:
                packed[:, j] |= ls[:, j] & 15
            else:
                packed[:, j - 8] |= (ls[:, j] & 15) << 4
            packed[:, 8 + j % 4] |= (ls[:, j] >> 4) << (2 * (j // 4))
        out = np.concatenate([hmask, _pack2(low), packed, d_bytes], axis=1)
    elif fmt == "IQ4_XS":
        s = b.reshape(nb, 8, 32)
        scale = _signed_max(s, 2) / -127.0
        d_bytes, d = _f16(_signed_max(scale, 1) / -32.0)
        ls = np.clip(np.round(scale / _safe(d)[:, None]), -32, 31)
        step = d[:, None] * ls
        idx = _nearest_level(s / _safe(step)[..., None])
        idx = np.where(step[..., None] != 0, idx, 8)
        u = (ls + 32).astype(np.uint16)
        scales_h = np.zeros(nb, dtype=np.uint16)
        scales_l = np.zeros((nb, 4), dtype=np.uint8)
        for ib in range(8):
            scales_h |= ((u[:, ib] >> 4) & 3) << (2 * ib)
            scales_l[:, ib // 2] |= ((u[:, ib] & 15) << (4 * (ib % 2))).astype(np.uint8)
        qs = _pack_nibbles(idx.reshape(-1, 32)).reshape(nb, 128)
        out = np.concatenate([d_bytes, scales_h.view(np.uint8).reshape(nb, 2), scales_l, qs], axis=1)
    else:
        raise ValueError(fmt)
    return out.reshape(rows, -1)


def llama3_factors(head_dim, base, factor, low, high, original):
    """The per-pair divisors of Llama 3's RoPE scaling, as convert_hf_to_gguf
    stores them in rope_freqs: 1 for high frequencies, `factor` for low ones,
    a smooth blend between."""
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / base ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def copy_tokenizer(writer, vocab_path, m):
    """Copies the vocab file's tokenizer, with the model's added tokens, end
    token and chat template in place of the file's. Returns the token list."""
    reader = gguf.GGUFReader(vocab_path)
    tokens = None
    overrides = {}
    if "eos" in m:
        overrides["tokenizer.ggml.eos_token_id"] = (m["eos"], gguf.GGUFValueType.UINT32)
    if "eom" in m:
        overrides["tokenizer.ggml.eom_token_id"] = (m["eom"], gguf.GGUFValueType.UINT32)
    if "template" in m:
        with open(os.path.join(MODELS_DIR, "vocab", "templates", m["template"])) as f:
            overrides["tokenizer.chat_template"] = (f.read(), gguf.GGUFValueType.STRING)
    appended = m.get("appended_tokens", [])
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer.") or name in overrides:
            continue
        main = field.types[0]
        value = field.contents()
        if main == gguf.GGUFValueType.ARRAY:
            if name == "tokenizer.ggml.tokens":
                for i, text in m.get("added_tokens", {}).items():
                    value[i] = text
                value += appended
                tokens = value
            elif name == "tokenizer.ggml.token_type":
                value += [int(gguf.TokenType.CONTROL)] * len(appended)
            elif name == "tokenizer.ggml.scores":
                value += [0.0] * len(appended)
            writer.add_key_value(name, value, main, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, value, main)
    for name, (value, kind) in overrides.items():
        writer.add_key_value(name, value, kind)
    return tokens


def write(name, m):
    rng = np.random.default_rng(m["seed"])
    d, hd, nh, nkv, ff = m["n_embd"], m["head_dim"], m["n_head"], m["n_head_kv"], m["n_ff"]
    arch = m["arch"]
    path = os.path.join(OUT_DIR, f"{name}.gguf")
    tmp = path + ".partial"
    w = gguf.GGUFWriter(tmp, arch)
    w.add_name(f"Lampo synthetic {name}")
    vocab_path = os.path.join(MODELS_DIR, "vocab", f"ggml-vocab-{m['vocab']}.gguf")
    tokens = copy_tokenizer(w, vocab_path, m)
    n_vocab = len(tokens)
    w.add_block_count(m["n_layer"])
    w.add_context_length(m["ctx"])
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(m.get("rope_dims", hd))
    w.add_rope_freq_base(m["rope_base"])
    w.add_layer_norm_rms_eps(m["eps"])
    if "sliding_window" in m:
        w.add_sliding_window(m["sliding_window"])
    if "attn_softcap" in m:
        w.add_attn_logit_softcapping(m["attn_softcap"])
        w.add_final_logit_softcapping(m["final_softcap"])
    if "longrope" in m:
        # As convert_hf_to_gguf writes Phi-3 128k files: the original context
        # and the magnitude factor sqrt(1 + ln(scale) / ln(original)).
        original = m["longrope"]["original"]
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(m["ctx"] / original) / math.log(original)))
    if "yarn" in m:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(m["yarn"]["factor"])
        w.add_rope_scaling_orig_ctx_len(m["yarn"]["original"])

    def normal(rows, cols, std):
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    qtype = m.get("qtype", "Q8_0")

    def add_matrix(tname, x):
        if qtype in LOWBIT:
            raw = quantize_lowbit(x, qtype)
            back = gguf.quants.dequantize(raw, LOWBIT[qtype])
            err = float(np.sqrt(np.mean((back - x) ** 2) / np.mean(x * x)))
            if not err < LOWBIT_ERROR[qtype]:
                sys.exit(f"{name}: {tname} in {qtype} round-trips with relative error {err:.3f}")
            w.add_tensor(tname, raw, raw_dtype=LOWBIT[qtype])
        else:
            w.add_tensor(tname, gguf.quants.quantize(x, Q.Q8_0), raw_dtype=Q.Q8_0)

    def matrix(tname, rows, cols, std):
        add_matrix(tname, normal(rows, cols, std))

    def gains(tname, n, lo, hi):
        w.add_tensor(tname, rng.uniform(lo, hi, n).astype(np.float32))

    scripted = "script" in m
    if scripted:
        # The input token's own row decides the next token: the embedding
        # passes the layers almost untouched, and each scripted token's
        # successor gets an output row along it (logit 10; a second choice
        # 5, for when a grammar bans the first), the rest noise below 1.
        embd = normal(n_vocab, d, 1.0)
        quant = gguf.quants.quantize(embd, Q.Q8_0)
        w.add_tensor("token_embd.weight", quant, raw_dtype=Q.Q8_0)
        w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
        h = gguf.quants.dequantize(quant, Q.Q8_0)
        h = h / np.sqrt(np.mean(h * h, axis=1, keepdims=True) + m["eps"])
        out = normal(n_vocab, d, 0.01)
        ids = {t: i for i, t in enumerate(tokens)}
        links = [(a, b, 10.0) for a, b in zip(m["script"], m["script"][1:])]
        links += [(a, b, 5.0) for a, b in m["second"]]
        for a, b, logit in links:
            row = h[ids[a]]
            out[ids[b]] += logit * row / np.dot(row, row)
        w.add_tensor("output.weight", gguf.quants.quantize(out, Q.Q8_0), raw_dtype=Q.Q8_0)
    else:
        # A tied table is also the output matrix: small enough that the
        # layers, not the input token's own row, decide the next token.
        matrix("token_embd.weight", n_vocab, d, m.get("embd_std", 0.7 if m["tied"] else 1.0))
        gains("output_norm.weight", d, 0.8, 1.2)
        if not m["tied"]:
            matrix("output.weight", n_vocab, d, 8.0 / math.sqrt(d))
    # A scripted model's layers write almost nothing into the stream.
    quiet = 0.01 if scripted else 1.0
    if "llama3_rope" in m:
        r = m["llama3_rope"]
        w.add_tensor("rope_freqs.weight",
                     llama3_factors(hd, m["rope_base"], r["factor"], r["low"], r["high"], r["original"]))
    if "longrope" in m:
        for kind in ("short", "long"):
            w.add_tensor(f"rope_factors_{kind}.weight", np.array(m["longrope"][kind], dtype=np.float32))
    qk_norm = arch == "qwen3"
    post_norms = arch == "gemma2"
    fused = arch == "phi3"
    for i in range(m["n_layer"]):
        b = f"blk.{i}."
        gains(b + "attn_norm.weight", d, 0.8, 1.2)
        # Without per-head norms, larger query/key weights make attention sharp.
        qk_std = (1.0 if qk_norm else 2.5) / math.sqrt(d)
        q = normal(nh * hd, d, qk_std)
        k = normal(nkv * hd, d, qk_std)
        v = normal(nkv * hd, d, 1.0 / math.sqrt(d))
        if fused:
            add_matrix(b + "attn_qkv.weight", np.concatenate([q, k, v]))
        else:
            for tname, x in (("attn_q", q), ("attn_k", k), ("attn_v", v)):
                add_matrix(b + tname + ".weight", x)
        matrix(b + "attn_output.weight", d, nh * hd, quiet / math.sqrt(nh * hd))
        if qk_norm:
            gains(b + "attn_q_norm.weight", hd, 1.5, 3.0)
            gains(b + "attn_k_norm.weight", hd, 1.5, 3.0)
        if post_norms:
            gains(b + "post_attention_norm.weight", d, *m["post_norm_gains"])
        gains(b + "ffn_norm.weight", d, 0.8, 1.2)
        gate = normal(ff, d, 1.0 / math.sqrt(d))
        up = normal(ff, d, 1.0 / math.sqrt(d))
        if fused:
            # Gate rows first, as Phi-3's gate_up_proj holds them.
            add_matrix(b + "ffn_up.weight", np.concatenate([gate, up]))
        else:
            add_matrix(b + "ffn_gate.weight", gate)
            add_matrix(b + "ffn_up.weight", up)
        matrix(b + "ffn_down.weight", d, ff, quiet / math.sqrt(ff))
        if post_norms:
            gains(b + "post_ffw_norm.weight", d, *m["post_norm_gains"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    names = sys.argv[1:] or list(MODELS)
    for name in names:
        if name not in MODELS:
            sys.exit(f"unknown synthetic model {name!r}; known: {', '.join(MODELS)}")
        path = os.path.join(OUT_DIR, f"{name}.gguf")
        if os.path.exists(path) and os.environ.get("LAMPO_SYNTHETIC_REBUILD") != "1":
            continue
        print(f"writing {write(name, MODELS[name])}", file=sys.stderr)


if __name__ == "__main__":
    main()
