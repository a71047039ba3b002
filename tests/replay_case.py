#!/usr/bin/env python3
"""Replays attnbench export cases (format attnbench-case/1) with an independent NumPy
implementation of docs/design.md §1, in float64, and compares the outputs and the final cache.

A case may store its KV cache and its weights in a narrow type (`kv_dtype`: bf16, f16 or int8;
`weight_dtype`: bf16; absent means f32). The replay then does what docs/design.md §5 defines:
each new K and V row (MLA: the `[c_kv | k_rope]` row, with one int8 scale for each part) is
rounded to the stored type once, when appended, and every later read sees the stored value.
Its own rounding is this file's, from the definitions (bf16 by integer operations on the f32
bits, f16 by NumPy's IEEE binary16, int8 with its f32 scale), and it checks every value of the
exported stored cache (and, for int8, every code and scale) against it. The replay computes K
and V in float64 and attnbench in float32, so a value within a hair of a rounding boundary may
legitimately round to the other side in one of them: a stored value is accepted when it is the
rounding of some value within BOUNDARY (relative to its row's largest value) of the replay's
own, and the replay then goes on with the stored value, so that outputs compare to 1e-4.

Usage: python3 replay_case.py CASE.json [CASE.json ...]
       python3 replay_case.py --self-test
Runs the rounding functions' own checks first (one line), then prints one line per case;
exits 1 if a check fails, a stored value is not a legitimate rounding, or any relative error
(max |a - b| / max |b|) is >= 1e-4.
"""
import json
import sys

import numpy as np

TOLERANCE = 1e-4
# How far (relative to a row's largest value) float32 and float64 K/V may differ.
BOUNDARY = 1e-5
# The int8 code of a NaN or an infinity.
INT8_NON_FINITE = -128


# --- The stored types, docs/design.md §5 -------------------------------------------------

def as_f32(x):
    return np.ascontiguousarray(x, dtype=np.float32)


def round_bf16(x):
    """float32 -> nearest bf16, ties to even, returned as float32. For a finite f32 with bits u
    the bf16 bits are (u + 0x7FFF + ((u >> 16) & 1)) >> 16 (beyond the largest bf16: infinity);
    a NaN keeps its upper half with the quiet bit set; an infinity stays itself."""
    x = as_f32(x)
    u = x.view(np.uint32).astype(np.uint64)
    top = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    top = np.where(np.isnan(x), (u >> 16) | 0x0040, top)
    return (top.astype(np.uint32) << 16).view(np.float32)


def round_f16(x):
    """float32 -> IEEE binary16, nearest with ties to even, overflow to infinity, subnormals
    kept; returned as float32 (self_test checks NumPy does exactly that)."""
    with np.errstate(over="ignore"):
        return as_f32(x).astype(np.float16).astype(np.float32)


def int8_codes(x, scale):
    """Codes of the float32 row x at float32 scale: round_half_even(x / scale) in float32,
    clamped to ±127; 0 for a zero scale; -128 for a NaN or an infinity."""
    x, scale = as_f32(x), np.float32(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint(x / scale), -127, 127) if scale != 0 else np.zeros_like(x)
    return np.where(np.isfinite(x), q, INT8_NON_FINITE).astype(np.int8)


def int8_scale(x):
    """max |x| over the finite values of the float32 row x, divided by 127 in float32."""
    x = as_f32(x)
    largest = np.max(np.abs(x[np.isfinite(x)]), initial=np.float32(0))
    return np.float32(largest) / np.float32(127)


def quantize_int8(x):
    scale = int8_scale(x)
    return int8_codes(x, scale), scale


def dequantize_int8(codes, scale):
    """codes · scale in float32; NaN for -128."""
    with np.errstate(over="ignore"):
        values = np.asarray(codes).astype(np.float32) * np.float32(scale)
    return np.where(np.asarray(codes) == INT8_NON_FINITE, np.float32(np.nan), values)


def bits(x):
    return as_f32(x).view(np.uint32)


def f32_of_bits(u):
    return np.asarray(u, dtype=np.uint32).view(np.float32)


def self_test():
    """The definitions on edge values: ties, overflow, subnormals, infinities and NaN."""
    checks = 0

    def same(actual, expected, what):
        nonlocal checks
        a, e = as_f32(actual), as_f32(expected)
        both_nan = np.isnan(a) & np.isnan(e)
        assert np.array_equal(np.where(both_nan, 0, bits(a)), np.where(both_nan, 0, bits(e))), (
            what, a, e)
        checks += 1

    one = np.float32(1)
    # bf16: 7 fraction bits, so an ulp at 1 is 2^-7.
    same(round_bf16([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20]),
         [1, 1 + 2**-6, 1 + 2**-7], "bf16 ties to even at 1")
    same(round_bf16(f32_of_bits([0x7F7F0000, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF])),
         f32_of_bits([0x7F7F0000, 0x7F7F0000, 0x7F800000, 0x7F800000]), "bf16 overflow")
    same(round_bf16(f32_of_bits([0x00008000, 0x00018000, 0x80018001])),
         f32_of_bits([0x00000000, 0x00020000, 0x80020000]), "bf16 subnormal ties")
    same(round_bf16([np.inf, -np.inf, -0.0]), [np.inf, -np.inf, -0.0], "bf16 infinities, -0")
    nan = round_bf16(f32_of_bits([0x7F800001, 0xFFC00000]))
    assert np.all(np.isnan(nan)) and np.all(bits(nan) & 0x00400000), bits(nan)
    assert list(bits(nan)) == [0x7FC00000, 0xFFC00000], bits(nan)
    checks += 1
    # f16: 10 fraction bits; largest 65504; smallest subnormal 2^-24.
    same(round_f16([1 + 2**-11, 1 + 3 * 2**-11, 65504, 65519.99, 65520, -65520]),
         [1, 1 + 2**-9, 65504, 65504, np.inf, -np.inf], "f16 ties and overflow")
    same(round_f16([2**-24, 2**-25, 1.5 * 2**-24, 2**-25 + 2**-40, 2**-14 - 2**-24, 1e-40]),
         [2**-24, 0, 2**-23, 2**-24, 2**-14 - 2**-24, 0], "f16 subnormals kept")
    assert np.all(np.isnan(round_f16([np.nan]))) and round_f16([np.inf])[0] == np.inf
    checks += 1
    # int8.
    codes, scale = quantize_int8(np.zeros(5))
    assert scale == 0 and not codes.any() and not dequantize_int8(codes, scale).any()
    codes, scale = quantize_int8([127, 0.5, 1.5, 2.5, -0.5, -1.5, -127])
    assert scale == one and list(codes) == [127, 0, 2, 2, 0, -2, -127], (scale, codes)
    codes, scale = quantize_int8([1e30, 1, -1, 0])
    assert scale == np.float32(1e30) / np.float32(127) and list(codes) == [127, 0, 0, 0]
    codes, scale = quantize_int8([2.0**-144, -(2.0**-145)])
    assert scale == 0 and list(codes) == [0, 0]
    codes, scale = quantize_int8([np.nan, np.inf, -np.inf, 2, -1])
    assert scale == np.float32(2) / np.float32(127), scale
    assert list(codes[:3]) == [-128] * 3 and codes[3] == 127, codes
    back = dequantize_int8(codes, scale)
    assert np.all(np.isnan(back[:3])) and np.all(np.isfinite(back[3:]))
    largest = np.finfo(np.float32).max
    codes, scale = quantize_int8([largest, -largest, 1])
    assert list(codes) == [127, -127, 0]
    assert list(dequantize_int8(codes, scale)[:2]) == [np.inf, -np.inf]
    checks += 7
    return checks


# --- The layers, docs/design.md §1 ----------------------------------------------------------

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


def weights(case):
    """The weights as stored; with bf16 weights every projection must be a bf16 value (the
    RMSNorm scales stay f32)."""
    w = {k: tensor(v) for k, v in case["weights"].items()}
    if case.get("weight_dtype", "f32") == "bf16":
        for name, m in w.items():
            if name.startswith("w_"):
                m32 = as_f32(m)
                assert np.array_equal(bits(round_bf16(m32)), bits(m32)), f"{name} is not bf16"
    return w


class StoredCache:
    """The cached tensors as the case's kv_dtype stores them, appended a step at a time.

    `groups[name]` is how many int8 scales a row of `name` has (its width splits evenly)."""

    def __init__(self, case, groups):
        self.case, self.groups = case, groups
        self.dtype = case.get("kv_dtype", "f32")
        self.rows = {name: None for name in groups}
        self.checked = self.at_boundary = 0

    def append(self, name, new, positions):
        """Appends new: (tokens, width) float64, rounded to the stored type; returns the whole
        tensor so far, (len, width), as every later read sees it."""
        stored = new if self.dtype == "f32" else self.check_stored(name, new, positions)
        old = self.rows[name]
        self.rows[name] = stored if old is None else np.concatenate([old, stored])
        return self.rows[name]

    def exported(self, name, suffix, positions):
        return tensor(self.case["cache"][name + suffix])[positions]

    def check_stored(self, name, new, positions):
        """The exported stored rows at positions, once each value is shown to be the rounding
        of the replay's own value or of one within BOUNDARY of it."""
        shape = (len(positions), self.groups[name], -1)
        x = new.reshape(shape)
        margin = BOUNDARY * np.max(np.abs(x), axis=-1, keepdims=True)
        stored = self.exported(name, "", positions).reshape(shape)
        if self.dtype == "int8":
            actual, low, own, high = self.check_int8(name, x, margin, stored, positions)
        else:
            rounding = round_bf16 if self.dtype == "bf16" else round_f16
            assert np.array_equal(bits(rounding(stored)), bits(stored)), f"{name}: not {self.dtype}"
            actual, low, own, high = stored, rounding(x - margin), rounding(x), rounding(x + margin)
        # Rounding is monotonic: what lies within the margin rounds between the two bounds.
        outside = (actual < low) | (actual > high)
        assert not outside.any(), (
            f"{name}: {int(outside.sum())} stored values are not the {self.dtype} of the "
            f"replay's, e.g. {actual[outside][:4]} for {x[outside][:4]}")
        self.checked += actual.size
        self.at_boundary += int(np.sum(actual != own))
        return stored.reshape(len(positions), -1).astype(np.float64)

    def check_int8(self, name, x, margin, stored, positions):
        """Checks the exported scales against the replay's and the values against codes ·
        scale; returns the exported codes, their bounds and the replay's own codes, all in
        the exported scales."""
        codes = self.exported(name, "_codes", positions).reshape(stored.shape)
        scales = self.exported(name, "_scales", positions).reshape(stored.shape[:2])
        own_scales = np.vectorize(int8_scale, signature="(n)->()")(x)
        close = np.abs(scales - own_scales) <= BOUNDARY * own_scales
        assert close.all(), f"{name}: scales {scales[~close]} against {own_scales[~close]}"
        read_back = dequantize_int8(codes, scales[..., None])
        assert np.array_equal(read_back, stored, equal_nan=True), f"{name}: values != codes · scales"

        def codes_at(values):
            return np.stack([
                np.stack([int8_codes(values[t, g], scales[t, g]) for g in range(x.shape[1])])
                for t in range(x.shape[0])
            ])

        return codes, codes_at(x - margin), codes_at(x), codes_at(x + margin)


def replay_grouped(case):
    c, w = case["config"], weights(case)
    nh, nkv, hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
    store, outputs = StoredCache(case, {"k": nkv, "v": nkv}), []
    for step in case["steps"]:
        x, pos = tensor(step["input"]), step["positions"]
        q = rope((x @ w["w_q"]).reshape(-1, nh, hd), pos, c["rope_theta"])
        k = rope((x @ w["w_k"]).reshape(-1, nkv, hd), pos, c["rope_theta"])
        v = (x @ w["w_v"]).reshape(-1, nkv, hd)
        cache_k = store.append("k", k.reshape(len(pos), -1), pos).reshape(-1, nkv, hd)
        cache_v = store.append("v", v.reshape(len(pos), -1), pos).reshape(-1, nkv, hd)
        group = nh // nkv
        keys, values = np.repeat(cache_k, group, axis=1), np.repeat(cache_v, group, axis=1)
        o = attend(q, keys, values, pos, 1.0 / np.sqrt(hd))
        outputs.append(o.reshape(len(pos), -1) @ w["w_o"])
    return outputs, store


def replay_mla(case):
    c, w = case["config"], weights(case)
    nh, d_c = c["n_heads"], c["kv_lora_rank"]
    nope, rope_dim, dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    eps, theta = c["rms_norm_eps"], c["rope_theta"]
    store, outputs = StoredCache(case, {"c_kv": 1, "k_rope": 1}), []
    for step in case["steps"]:
        x, pos = tensor(step["input"]), step["positions"]
        if c["q_lora_rank"] is None:
            q = x @ w["w_q"]
        else:
            q = rms_norm(x @ w["w_dq"], w["q_norm"], eps) @ w["w_uq"]
        q = q.reshape(-1, nh, nope + rope_dim)
        q_nope, q_rope = q[..., :nope], rope(q[..., nope:], pos, theta)
        kv = x @ w["w_dkv"]
        c_kv_cache = store.append("c_kv", rms_norm(kv[:, :d_c], w["kv_norm"], eps), pos)
        k_rope_cache = store.append("k_rope", rope(kv[:, d_c:], pos, theta), pos)
        s = len(c_kv_cache)
        k_nope = (c_kv_cache @ w["w_uk"]).reshape(s, nh, nope)
        v = (c_kv_cache @ w["w_uv"]).reshape(s, nh, dv)
        keys = np.concatenate([k_nope, np.broadcast_to(k_rope_cache[:, None, :], (s, nh, rope_dim))], axis=-1)
        queries = np.concatenate([q_nope, q_rope], axis=-1)
        o = attend(queries, keys, v, pos, 1.0 / np.sqrt(nope + rope_dim))
        outputs.append(o.reshape(len(pos), -1) @ w["w_o"])
    return outputs, store


def relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def check(path):
    with open(path) as f:
        case = json.load(f)
    assert case["format"] == "attnbench-case/1", case["format"]
    try:
        outputs, store = replay_mla(case) if case["variant"] == "mla" else replay_grouped(case)
    except AssertionError as e:
        print(f"{path}: {e}")
        return False
    errors = [relative_error(tensor(s["output"]), o) for s, o in zip(case["steps"], outputs)]
    for name, rows in store.rows.items():
        exported = tensor(case["cache"][name])
        assert exported.shape == rows.shape, (name, exported.shape, rows.shape)
        errors.append(relative_error(exported, rows))
    worst = max(errors)
    label = case["variant"] + ("-" + case["mla_path"] if "mla_path" in case else "")
    types = f"kv {store.dtype}, weights {case.get('weight_dtype', 'f32')}"
    stored = ""
    if store.dtype != "f32":
        stored = f", {store.checked} stored values as rounded ({store.at_boundary} at a rounding boundary)"
    print(f"{path}: {label}, {types}, {len(case['steps'])} steps, worst relative error {worst:.2e}{stored}")
    return worst < TOLERANCE


def main():
    print(f"self-test: {self_test()} checks of the stored types")
    if sys.argv[1:] == ["--self-test"]:
        return
    ok = all([check(p) for p in sys.argv[1:]])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
