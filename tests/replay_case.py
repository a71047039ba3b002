#!/usr/bin/env python3
"""Replays attnbench export cases (format attnbench-case/1) with an independent NumPy
implementation of docs/design.md §1, in float64, and compares the outputs and the final cache.

Usage: python3 replay_case.py CASE.json [CASE.json ...]
Prints one line per case; exits 1 if any relative error (max |a - b| / max |b|) is >= 1e-4.
"""
import json
import sys

import numpy as np

TOLERANCE = 1e-4


def tensor(t):
    return np.asarray(t["data"], dtype=np.float64).reshape(t["shape"])


def rope(x, positions, theta):
    """Rotate-half RoPE on the last axis of x: (tokens, ..., dim)."""
    dim = x.shape[-1]
    half = dim // 2
    inv_freq = theta ** (-2.0 * np.arange(half) / dim)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    shape = (len(positions),) + (1,) * (x.ndim - 2) + (half,)
    cos, sin = np.cos(angles).reshape(shape), np.sin(angles).reshape(shape)
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale.reshape(-1)


def attend(q, k, v, positions, scale):
    """q: (t, heads, d), k: (s, heads, d), v: (s, heads, dv); key j sits at position j."""
    scores = np.einsum("thd,shd->hts", q, k) * scale
    mask = np.arange(k.shape[0])[None, :] > np.asarray(positions)[:, None]
    scores = np.where(mask[None], -np.inf, scores)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v)


def replay_grouped(case):
    c, w = case["config"], {k: tensor(v) for k, v in case["weights"].items()}
    nh, nkv, hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
    cache_k, cache_v, outputs = np.zeros((0, nkv, hd)), np.zeros((0, nkv, hd)), []
    for step in case["steps"]:
        x, pos = tensor(step["input"]), step["positions"]
        q = rope((x @ w["w_q"]).reshape(-1, nh, hd), pos, c["rope_theta"])
        k = rope((x @ w["w_k"]).reshape(-1, nkv, hd), pos, c["rope_theta"])
        v = (x @ w["w_v"]).reshape(-1, nkv, hd)
        cache_k, cache_v = np.concatenate([cache_k, k]), np.concatenate([cache_v, v])
        group = nh // nkv
        keys, values = np.repeat(cache_k, group, axis=1), np.repeat(cache_v, group, axis=1)
        o = attend(q, keys, values, pos, 1.0 / np.sqrt(hd))
        outputs.append(o.reshape(len(pos), -1) @ w["w_o"])
    cache = {"k": cache_k.reshape(len(cache_k), -1), "v": cache_v.reshape(len(cache_v), -1)}
    return outputs, cache


def replay_mla(case):
    c, w = case["config"], {k: tensor(v) for k, v in case["weights"].items()}
    nh, d_c = c["n_heads"], c["kv_lora_rank"]
    nope, rope_dim, dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    eps, theta = c["rms_norm_eps"], c["rope_theta"]
    c_kv_cache, k_rope_cache, outputs = np.zeros((0, d_c)), np.zeros((0, rope_dim)), []
    for step in case["steps"]:
        x, pos = tensor(step["input"]), step["positions"]
        if c["q_lora_rank"] is None:
            q = x @ w["w_q"]
        else:
            q = rms_norm(x @ w["w_dq"], w["q_norm"], eps) @ w["w_uq"]
        q = q.reshape(-1, nh, nope + rope_dim)
        q_nope, q_rope = q[..., :nope], rope(q[..., nope:], pos, theta)
        kv = x @ w["w_dkv"]
        c_kv = rms_norm(kv[:, :d_c], w["kv_norm"], eps)
        k_rope = rope(kv[:, d_c:], pos, theta)
        c_kv_cache = np.concatenate([c_kv_cache, c_kv])
        k_rope_cache = np.concatenate([k_rope_cache, k_rope])
        s = len(c_kv_cache)
        k_nope = (c_kv_cache @ w["w_uk"]).reshape(s, nh, nope)
        v = (c_kv_cache @ w["w_uv"]).reshape(s, nh, dv)
        keys = np.concatenate([k_nope, np.broadcast_to(k_rope_cache[:, None, :], (s, nh, rope_dim))], axis=-1)
        queries = np.concatenate([q_nope, q_rope], axis=-1)
        o = attend(queries, keys, v, pos, 1.0 / np.sqrt(nope + rope_dim))
        outputs.append(o.reshape(len(pos), -1) @ w["w_o"])
    return outputs, {"c_kv": c_kv_cache, "k_rope": k_rope_cache}


def relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def check(path):
    with open(path) as f:
        case = json.load(f)
    assert case["format"] == "attnbench-case/1", case["format"]
    outputs, cache = replay_mla(case) if case["variant"] == "mla" else replay_grouped(case)
    errors = [relative_error(tensor(s["output"]), o) for s, o in zip(case["steps"], outputs)]
    errors += [relative_error(tensor(case["cache"][name]), cache[name]) for name in cache]
    worst = max(errors)
    label = case["variant"] + ("-" + case["mla_path"] if "mla_path" in case else "")
    print(f"{path}: {label}, {len(case['steps'])} steps, worst relative error {worst:.2e}")
    return worst < TOLERANCE


def main():
    ok = all([check(p) for p in sys.argv[1:]])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
