//! The stored types of docs/design.md §5, bit for bit, against references written here from
//! the definitions (not from the library's code): a 16-bit float is rounded to the nearest of
//! the values its bit patterns stand for, found by search and compared in exact f64
//! arithmetic, ties to the even pattern; int8 rows against the formulas of §5.

use attnbench::kernels::{
    INT8_NON_FINITE, bf16, dequantize_int8, f16, quantize_int8, round_to_bf16, round_to_f16,
    widen_bf16, widen_f16,
};

/// A binary16-sized float format: 1 sign bit, `exp_bits` exponent bits, `man_bits` mantissa
/// bits, bias `2^(exp_bits − 1) − 1`.
#[derive(Clone, Copy, Debug)]
struct Format {
    name: &'static str,
    exp_bits: u32,
    man_bits: u32,
}

const BF16: Format = Format {
    name: "bf16",
    exp_bits: 8,
    man_bits: 7,
};
const F16: Format = Format {
    name: "f16",
    exp_bits: 5,
    man_bits: 10,
};

impl Format {
    fn bias(self) -> i32 {
        (1 << (self.exp_bits - 1)) - 1
    }

    /// The pattern of +∞ (all exponent bits set, mantissa 0), also the first NaN-or-∞ pattern.
    fn infinity(self) -> u16 {
        (((1u32 << self.exp_bits) - 1) << self.man_bits) as u16
    }

    /// The quiet bit: the top mantissa bit.
    fn quiet_bit(self) -> u16 {
        1 << (self.man_bits - 1)
    }

    /// The magnitude of a non-negative pattern up to [`Self::infinity`], in f64 (exact: at
    /// most 11 significant bits). The infinity pattern gives `2^(bias + 1)`, the next value
    /// of the format with an unbounded exponent: IEEE 754 rounds to it, then overflows.
    fn grid(self, pattern: u16) -> f64 {
        let e = i32::from(pattern >> self.man_bits);
        let m = f64::from(pattern & ((1 << self.man_bits) - 1));
        let p = self.man_bits as i32;
        if e == 0 {
            m * 2f64.powi(1 - self.bias() - p)
        } else {
            (2f64.powi(p) + m) * 2f64.powi(e - self.bias() - p)
        }
    }

    /// The pattern nearest to a non-NaN `x`, ties to the even pattern, from the definition:
    /// the largest grid value not above `|x|` by binary search, then the nearer of it and the
    /// next one.
    fn nearest(self, x: f32) -> u16 {
        let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
        let a = f64::from(x.abs());
        if a >= self.grid(self.infinity()) {
            return sign | self.infinity();
        }
        let (mut lo, mut hi) = (0u16, self.infinity());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.grid(mid) <= a {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // Both differences are exact in f64: a has 24 significant bits, the grid values 11.
        let (below, above) = (a - self.grid(lo), self.grid(hi) - a);
        let pick = if below < above || below == above && lo % 2 == 0 {
            lo
        } else {
            hi
        };
        sign | pick
    }

    /// The value of any pattern as an f64, `None` for a NaN.
    fn value(self, pattern: u16) -> Option<f64> {
        let magnitude = pattern & 0x7fff;
        let v = match magnitude.cmp(&self.infinity()) {
            std::cmp::Ordering::Less => self.grid(magnitude),
            std::cmp::Ordering::Equal => f64::INFINITY,
            std::cmp::Ordering::Greater => return None,
        };
        Some(if pattern & 0x8000 != 0 { -v } else { v })
    }

    /// Rounds `xs` with the library.
    fn round(self, xs: &[f32]) -> Vec<u16> {
        match self.name {
            "bf16" => {
                let mut out = vec![bf16::ZERO; xs.len()];
                round_to_bf16(xs, &mut out);
                out.iter().map(|v| v.to_bits()).collect()
            }
            _ => {
                let mut out = vec![f16::ZERO; xs.len()];
                round_to_f16(xs, &mut out);
                out.iter().map(|v| v.to_bits()).collect()
            }
        }
    }

    /// Widens `patterns` with the library.
    fn widen(self, patterns: &[u16]) -> Vec<f32> {
        let mut out = vec![0.0f32; patterns.len()];
        match self.name {
            "bf16" => {
                let src: Vec<bf16> = patterns.iter().map(|&p| bf16::from_bits(p)).collect();
                widen_bf16(&src, &mut out);
            }
            _ => {
                let src: Vec<f16> = patterns.iter().map(|&p| f16::from_bits(p)).collect();
                widen_f16(&src, &mut out);
            }
        }
        out
    }

    /// Every value of `xs` rounds as the reference says; a NaN to a quiet NaN of its sign.
    fn check_rounding(self, xs: &[f32]) {
        for (&x, got) in xs.iter().zip(self.round(xs)) {
            let label = format!("{} of {x:e} ({:#010x})", self.name, x.to_bits());
            if x.is_nan() {
                let magnitude = got & 0x7fff;
                assert!(
                    magnitude > self.infinity(),
                    "{label}: {got:#06x} is not a NaN"
                );
                assert_ne!(
                    magnitude & self.quiet_bit(),
                    0,
                    "{label}: {got:#06x} not quiet"
                );
                assert_eq!(got & 0x8000 != 0, x.is_sign_negative(), "{label}: sign");
            } else {
                assert_eq!(got, self.nearest(x), "{label}: got {got:#06x}");
            }
        }
    }

    /// Each `(x, pattern)` rounds to the pattern written down, which the reference agrees with.
    fn check_named(self, cases: &[(f32, u16)]) {
        let xs: Vec<f32> = cases.iter().map(|c| c.0).collect();
        for ((x, want), got) in cases.iter().zip(self.round(&xs)) {
            assert_eq!(
                got, *want,
                "{} of {x:e}: {got:#06x}, not {want:#06x}",
                self.name
            );
        }
        self.check_rounding(&xs);
    }

    /// Around every finite pattern: the value itself, its f32 neighbours, the midpoint to the
    /// next pattern and the midpoint's neighbours (ties and near-ties, at even and odd
    /// patterns, in the subnormals and at the overflow threshold), both signs.
    fn values_around_every_pattern(self) -> Vec<f32> {
        let mut xs = Vec::new();
        for p in 0..self.infinity() {
            let mid = (self.grid(p) + self.grid(p + 1)) / 2.0;
            for v in [self.grid(p), mid] {
                let v = v as f32;
                for u in [v.to_bits().saturating_sub(1), v.to_bits(), v.to_bits() + 1] {
                    xs.push(f32::from_bits(u));
                    xs.push(-f32::from_bits(u));
                }
            }
        }
        xs
    }
}

/// `count` f32 bit patterns from an xorshift stream: every class of value, NaNs included.
fn random_bits(mut state: u64, count: usize) -> Vec<f32> {
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f32::from_bits((state >> 32) as u32)
        })
        .collect()
}

/// f32 values that are `m · 2^e`, exactly.
fn pow2(m: f32, e: i32) -> f32 {
    (f64::from(m) * 2f64.powi(e)) as f32
}

#[test]
fn bf16_rounds_the_named_edge_values_as_docs_say() {
    let cases: &[(f32, u16)] = &[
        (0.0, 0x0000),
        (-0.0, 0x8000),
        (1.0, 0x3f80),
        // 1 + 2^-8 is halfway between 1 (even) and 1 + 2^-7 (odd): down to 1.
        (1.0 + pow2(1.0, -8), 0x3f80),
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
        (1.0 + pow2(3.0, -8), 0x3f82),
        // Just above a tie rounds up.
        (1.0 + pow2(1.0, -8) + pow2(1.0, -23), 0x3f81),
        (-1.0 - pow2(1.0, -8) - pow2(1.0, -23), 0xbf81),
        // The largest finite bf16, (2 − 2^-7)·2^127, stays; from halfway to 2^128 it is ∞.
        (f32::from_bits(0x7f7f_0000), 0x7f7f),
        (f32::from_bits(0x7f7f_7fff), 0x7f7f),
        (f32::from_bits(0x7f7f_8000), 0x7f80),
        (f32::MAX, 0x7f80),
        (-f32::MAX, 0xff80),
        (f32::INFINITY, 0x7f80),
        (f32::NEG_INFINITY, 0xff80),
        // Subnormals are kept: the smallest bf16 subnormal is 2^-133; half of it ties to 0,
        // three halves tie to 2 · 2^-133 (even).
        (pow2(1.0, -133), 0x0001),
        (pow2(1.0, -134), 0x0000),
        (pow2(3.0, -134), 0x0002),
        (-pow2(1.0, -133), 0x8001),
        // The smallest f32 subnormal is far below half of 2^-133.
        (f32::from_bits(1), 0x0000),
        (-f32::from_bits(1), 0x8000),
    ];
    BF16.check_named(cases);
}

#[test]
fn f16_rounds_the_named_edge_values_as_docs_say() {
    let cases: &[(f32, u16)] = &[
        (0.0, 0x0000),
        (-0.0, 0x8000),
        (1.0, 0x3c00),
        (1.0 + pow2(1.0, -11), 0x3c00),
        (1.0 + pow2(3.0, -11), 0x3c02),
        (65504.0, 0x7bff),
        (65519.99, 0x7bff),
        (65520.0, 0x7c00),
        (-65520.0, 0xfc00),
        (f32::MAX, 0x7c00),
        (f32::INFINITY, 0x7c00),
        (f32::NEG_INFINITY, 0xfc00),
        // The smallest normal, and the subnormals below it kept.
        (pow2(1.0, -14), 0x0400),
        (pow2(1.0, -24), 0x0001),
        (pow2(1.0, -25), 0x0000),
        (pow2(1.0, -25) * (1.0 + f32::EPSILON), 0x0001),
        (pow2(3.0, -25), 0x0002),
        (-pow2(1.0, -24), 0x8001),
        (1e-8, 0x0000),
        (-1e-8, 0x8000),
    ];
    F16.check_named(cases);
}

#[test]
fn rounding_matches_the_reference_around_every_pattern_and_on_random_bits() {
    for format in [BF16, F16] {
        format.check_rounding(&format.values_around_every_pattern());
        format.check_rounding(&random_bits(0x9e37_79b9_7f4a_7c15, 1 << 18));
    }
}

#[test]
fn nans_stay_quiet_nans_of_their_sign() {
    let nans: Vec<f32> = [
        0x7fc0_0000u32, // the default quiet NaN
        0x7f80_0001,    // signalling, lowest payload bit only
        0x7fa0_0000,    // signalling, a high payload bit
        0x7fff_ffff,
        0xff80_0001,
        0xffc0_0000,
    ]
    .into_iter()
    .map(f32::from_bits)
    .collect();
    for format in [BF16, F16] {
        format.check_rounding(&nans);
    }
}

#[test]
fn widening_is_exact_for_every_pattern() {
    let patterns: Vec<u16> = (0..=u16::MAX).collect();
    for format in [BF16, F16] {
        for (&p, got) in patterns.iter().zip(format.widen(&patterns)) {
            let label = format!("{} {p:#06x} widened to {got:e}", format.name);
            match format.value(p) {
                Some(v) => assert_eq!(got.to_bits(), (v as f32).to_bits(), "{label}"),
                None => {
                    assert!(got.is_nan(), "{label}");
                    assert_eq!(got.is_sign_negative(), p & 0x8000 != 0, "{label}: sign");
                    if format.name == "f16" {
                        assert_ne!(got.to_bits() & 0x0040_0000, 0, "{label}: not quiet");
                    }
                }
            }
        }
    }
    // A bf16 is the upper half of an f32: widening keeps every bit, NaNs included.
    for (&p, got) in patterns.iter().zip(BF16.widen(&patterns)) {
        assert_eq!(got.to_bits(), u32::from(p) << 16, "bf16 {p:#06x}");
    }
}

#[test]
fn every_finite_pattern_survives_widening_and_rounding() {
    for format in [BF16, F16] {
        let patterns: Vec<u16> = (0..=u16::MAX)
            .filter(|&p| p & 0x7fff <= format.infinity())
            .collect();
        let back = format.round(&format.widen(&patterns));
        assert_eq!(back, patterns, "{}", format.name);
    }
}

/// §5's int8 quantisation of a row, written from the formulas: the scale from the largest
/// finite magnitude, the quotient in f32, rounded half to even by comparing its fraction.
fn quantize_reference(x: &[f32]) -> (f32, Vec<i8>) {
    let largest = x
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| f64::from(*v).abs())
        .fold(0.0f64, f64::max) as f32;
    let scale = largest / 127.0;
    let q = x
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                return -128;
            }
            if scale == 0.0 {
                return 0;
            }
            let t = f64::from(v / scale);
            let (floor, fraction) = (t.floor(), t - t.floor());
            let rounded = if fraction > 0.5 || fraction == 0.5 && floor % 2.0 != 0.0 {
                floor + 1.0
            } else {
                floor
            };
            rounded.clamp(-127.0, 127.0) as i8
        })
        .collect();
    (scale, q)
}

/// Quantises `x`, checks it against the reference, and returns the scale, the codes and the
/// row read back.
fn quantize_checked(x: &[f32]) -> (f32, Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; x.len()];
    let scale = quantize_int8(x, &mut q);
    let (want_scale, want_q) = quantize_reference(x);
    assert_eq!(scale.to_bits(), want_scale.to_bits(), "scale of {x:?}");
    assert_eq!(q, want_q, "codes of {x:?}");
    let mut back = vec![0.0f32; x.len()];
    dequantize_int8(&q, scale, &mut back);
    for ((&b, &code), v) in back.iter().zip(&q).zip(x) {
        if code == INT8_NON_FINITE {
            assert!(b.is_nan(), "{v} read back as {b}");
        } else {
            assert_eq!(b.to_bits(), (f32::from(code) * scale).to_bits(), "{v}");
        }
    }
    (scale, q, back)
}

#[test]
fn int8_all_zero_row_has_scale_zero_and_reads_back_zeros() {
    let (scale, q, back) = quantize_checked(&[0.0, -0.0, 0.0, 0.0]);
    assert_eq!(scale, 0.0);
    assert_eq!(q, [0, 0, 0, 0]);
    assert!(back.iter().all(|&v| v == 0.0));
    // So does a row whose largest magnitude is below 2^-143: m / 127 rounds to 0.
    let (scale, q, back) = quantize_checked(&[pow2(63.0, -149), -pow2(5.0, -149)]);
    assert_eq!((scale, q, back), (0.0, vec![0, 0], vec![0.0, 0.0]));
    let (scale, q, _) = quantize_checked(&[pow2(64.0, -149)]);
    assert_eq!((scale, q), (pow2(1.0, -149), vec![64]));
}

#[test]
fn int8_one_huge_value_takes_the_scale_and_the_others_quantise_to_zero() {
    let (scale, q, back) = quantize_checked(&[1.0, -2.0, 1e30, 0.5, -3e-5]);
    assert_eq!(scale, 1e30f32 / 127.0);
    assert_eq!(q, [0, 0, 127, 0, 0]);
    assert_eq!(back[0], 0.0);
    assert!((back[2] - 1e30).abs() <= 1e30 * f32::EPSILON);
    // The one finite value that does not read back finite: f32::MAX, where 127 · scale rounds
    // past it (docs/design.md §5 says so).
    let (_, q, back) = quantize_checked(&[f32::MAX, 1.0]);
    assert_eq!(q, [127, 0]);
    assert_eq!(back, [f32::INFINITY, 0.0]);
    let (_, _, back) = quantize_checked(&[f32::from_bits(f32::MAX.to_bits() - 1)]);
    assert!(back[0].is_finite());
}

#[test]
fn int8_ties_round_to_even() {
    // max 127: scale 1, so x / scale is x exactly.
    let x = [
        127.0, 2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 1.5, 126.5, -126.5, 0.49,
    ];
    let (scale, q, _) = quantize_checked(&x);
    assert_eq!(scale, 1.0);
    assert_eq!(q, [127, 2, 4, -2, -4, 0, 0, 2, 126, -126, 0]);
    // max 254: scale 2, so 5 → 2.5 → 2 and 7 → 3.5 → 4.
    let (scale, q, back) = quantize_checked(&[254.0, 5.0, 7.0, -5.0]);
    assert_eq!(scale, 2.0);
    assert_eq!(q, [127, 2, 4, -2]);
    assert_eq!(back, [254.0, 4.0, 8.0, -4.0]);
}

#[test]
fn int8_non_finite_values_read_back_as_nan_and_leave_the_scale_to_the_rest() {
    let x = [
        f32::NAN,
        1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -127.0,
        0.25,
    ];
    let (scale, q, back) = quantize_checked(&x);
    assert_eq!(scale, 1.0);
    assert_eq!(q, [-128, 1, -128, -128, -127, 0]);
    assert!(back[0].is_nan() && back[2].is_nan() && back[3].is_nan());
    assert_eq!([back[1], back[4], back[5]], [1.0, -127.0, 0.0]);
    let (scale, q, back) = quantize_checked(&[f32::NAN, f32::INFINITY, 0.0]);
    assert_eq!((scale, q), (0.0, vec![-128, -128, 0]));
    assert!(back[0].is_nan() && back[1].is_nan() && back[2] == 0.0);
}

#[test]
fn int8_random_rows_match_the_reference_within_half_a_step() {
    let bits = random_bits(0x2545_f491_4f6c_dd1d, 1 << 16);
    let mut at = 0;
    for len in 1..=130 {
        for magnitude in [-140, -20, 0, 20, 100] {
            // Finite values of mixed sign around 2^magnitude, and the raw bit patterns.
            let mixed: Vec<f32> = (0..len)
                .map(|i| pow2(((i * 37 % 101) as f32 - 50.0) / 13.0, magnitude))
                .collect();
            let raw = &bits[at..at + len];
            at = (at + len) % (bits.len() - 200);
            for x in [&mixed[..], raw] {
                let (scale, q, back) = quantize_checked(x);
                for ((&v, &b), &code) in x.iter().zip(&back).zip(&q) {
                    if !v.is_finite() {
                        continue;
                    }
                    assert_ne!(code, INT8_NON_FINITE, "{v} is finite");
                    if scale.is_normal() && b.is_finite() {
                        let step = f64::from(scale);
                        let err = (f64::from(v) - f64::from(b)).abs();
                        assert!(err <= 0.5 * step * (1.0 + 1e-5), "{v} read back as {b}");
                    }
                }
            }
        }
    }
}

/// `half`'s software conversions (its path on a CPU without F16C; `from_f32_const` and
/// `to_f32_const` always take it) round and widen as the reference says too, so the f16
/// contract does not hang on this machine's instructions.
#[test]
fn f16_software_path_matches_the_reference() {
    let mut xs = F16.values_around_every_pattern();
    xs.extend(random_bits(0x51_7cc1_b727_220a, 1 << 16));
    for x in xs.into_iter().filter(|x| !x.is_nan()) {
        let got = f16::from_f32_const(x).to_bits();
        assert_eq!(got, F16.nearest(x), "f16 of {x:e}: got {got:#06x}");
    }
    for p in 0..=u16::MAX {
        let got = f16::from_bits(p).to_f32_const();
        match F16.value(p) {
            Some(v) => assert_eq!(got.to_bits(), (v as f32).to_bits(), "{p:#06x}"),
            None => assert!(got.is_nan() && got.to_bits() & 0x0040_0000 != 0, "{p:#06x}"),
        }
    }
}

/// docs/design.md §5 states bf16 rounding as a formula on the bits; it is the nearest value,
/// ties to even, on every finite f32 the other tests use.
#[test]
fn the_documented_bf16_formula_is_round_to_nearest_even() {
    let mut xs = BF16.values_around_every_pattern();
    xs.extend(random_bits(0x2545_f491_4f6c_dd1d, 1 << 16));
    for x in xs.into_iter().filter(|x| x.is_finite()) {
        let u = x.to_bits();
        let formula = ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16;
        assert_eq!(formula, BF16.nearest(x), "{x:e}");
    }
}
