//! The stored types of docs/design.md §5, bit for bit: rounding f32 to bf16 and f16 and
//! widening them back, and int8 rows with one f32 scale each.
//!
//! bf16 and f16 are the `half` crate's types (the vocabulary of the Rust ML crates) and its
//! conversions: f32 → bf16 is exactly §5's `(u + 0x7FFF + ((u >> 16) & 1)) >> 16` with quiet
//! NaNs, and f32 ↔ f16 runs on F16C (`vcvtps2ph` with round-to-nearest-even, `vcvtph2ps`)
//! when the CPU has it, else on a software path that rounds the same way, subnormals kept.
//! `tests/dtypes.rs` checks both directions against a reference built from the definitions.

use half::slice::HalfFloatSliceExt;
pub use half::{bf16, f16};

/// `dst[i] = src[i]` rounded to the nearest bf16, ties to even; a value beyond the largest
/// bf16 becomes the infinity of its sign, an infinity stays, a NaN stays a NaN (made quiet).
///
/// # Panics
/// If the slices differ in length.
#[track_caller]
pub fn round_to_bf16(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "round_to_bf16 lengths");
    dst.convert_from_f32_slice(src);
}

/// `dst[i] = src[i]` as an f32: exact, every bit pattern (a bf16 is the upper half of an f32),
/// so a signalling NaN stays as it is; the rounding functions never store one.
///
/// # Panics
/// If the slices differ in length.
#[track_caller]
pub fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_bf16 lengths");
    for (d, s) in dst.iter_mut().zip(src) {
        *d = bf16_bits_to_f32(s.to_bits());
    }
}

/// The f32 whose upper half is `bits`: a bf16 widened, exactly.
#[inline(always)]
pub(crate) fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// `dst[i] = src[i]` rounded to the nearest IEEE binary16, ties to even: beyond the largest
/// finite f16 (65504; from 65520 up) to the infinity of its sign, below the smallest normal to
/// a subnormal (not flushed to zero), a NaN to a quiet NaN.
///
/// # Panics
/// If the slices differ in length.
#[track_caller]
pub fn round_to_f16(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "round_to_f16 lengths");
    dst.convert_from_f32_slice(src);
}

/// `dst[i] = src[i]` as an f32: exact (every binary16 value, subnormals included, is an f32);
/// a NaN stays a NaN (made quiet).
///
/// # Panics
/// If the slices differ in length.
#[track_caller]
pub fn widen_f16(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_f16 lengths");
    src.convert_to_f32_slice(dst);
}

/// The int8 code of a value that is not finite (NaN or ±∞). Symmetric quantisation never
/// produces −128 (`q` is clamped to ±127), so the code is free; it reads back as NaN.
pub const INT8_NON_FINITE: i8 = i8::MIN;

/// Quantises one row `x` (one token of one KV head, or of MLA's latent or rope part) into `q`
/// and returns its scale (docs/design.md §5):
/// - `scale = m / 127` in f32, `m` the largest magnitude among the finite values of `x`;
/// - a finite value gets `q = clamp(round_half_even(x / scale), −127, 127)`;
/// - a NaN or an infinity gets [`INT8_NON_FINITE`], so it stays non-finite when read back and
///   poisons exactly the outputs the f32 value would have;
/// - when `scale` is 0 (every finite value is ±0, or `m` is below 2^-143 so that `m / 127`
///   rounds to 0) every finite value gets `q = 0`.
///
/// # Panics
/// If the slices differ in length.
#[track_caller]
pub fn quantize_int8(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(x.len(), q.len(), "quantize_int8 lengths");
    let largest = x
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = largest / 127.0;
    for (code, &v) in q.iter_mut().zip(x) {
        *code = if !v.is_finite() {
            INT8_NON_FINITE
        } else if scale == 0.0 {
            0
        } else {
            // In [−127, 127] after the clamp, so the cast is exact.
            (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8
        };
    }
    scale
}

/// `out[i] = q[i] · scale`, NaN for [`INT8_NON_FINITE`]: one row read back (docs/design.md
/// §5). Finite codes give finite values, but for `q = ±127` of a row whose largest magnitude is
/// `f32::MAX` itself, where `127 · scale` rounds past it to infinity.
///
/// # Panics
/// If the slices differ in length.
#[track_caller]
pub fn dequantize_int8(q: &[i8], scale: f32, out: &mut [f32]) {
    assert_eq!(q.len(), out.len(), "dequantize_int8 lengths");
    for (o, &code) in out.iter_mut().zip(q) {
        *o = int8_code_to_f32(code) * scale;
    }
}

/// A code as an f32 before its row's scale: the integer, or NaN for [`INT8_NON_FINITE`].
#[inline(always)]
pub(crate) fn int8_code_to_f32(code: i8) -> f32 {
    if code == INT8_NON_FINITE {
        f32::NAN
    } else {
        f32::from(code)
    }
}
