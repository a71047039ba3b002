//! How points are grouped and labelled: one row of a table, one series of a chart. Tables and
//! charts share this so that a chart's legend names exactly the rows of the tables beside it.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::config::{Dtype, Kernel, Mode, Precision, Variant, WeightDtype};
use crate::results::PointResult;

/// The KV-cache types in the order the tables, the charts and the docs list them: widest
/// first, then the 16-bit types (bf16, the more common, before f16), then int8.
pub(super) const KV_DTYPE_ORDER: [Dtype; 4] = [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::Int8];

/// The place of `dtype` in [`KV_DTYPE_ORDER`].
pub(super) fn kv_dtype_rank(dtype: Dtype) -> usize {
    KV_DTYPE_ORDER
        .iter()
        .position(|&d| d == dtype)
        .unwrap_or(KV_DTYPE_ORDER.len())
}

/// A point's stored types, ordered as the rows show them: by weight type, then by KV-cache
/// type in [`KV_DTYPE_ORDER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Stored {
    weight_dtype: WeightDtype,
    kv_rank: usize,
}

impl Stored {
    pub(super) fn of(p: &PointResult) -> Self {
        Self {
            weight_dtype: p.weight_dtype,
            kv_rank: kv_dtype_rank(p.kv_dtype),
        }
    }
}

/// Whether a point is stored in anything but f32: the cache or the weights.
pub(super) fn is_narrow(p: &PointResult) -> bool {
    !Precision {
        kv_dtype: p.kv_dtype,
        weight_dtype: p.weight_dtype,
    }
    .is_f32()
}

/// Whether the tables and charts of `points` (a whole results set) show the stored types:
/// when some point is not all f32. A set that is all f32 reads exactly as before the types.
pub(super) fn shows_stored_types(points: &[PointResult]) -> bool {
    points.iter().any(is_narrow)
}

/// What tells points of one mode apart besides their variant (with GQA's KV heads) and
/// their length: query heads, batch, threads, the cache a prefill starts from (decode's
/// context is its length), and the kernel.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Setting {
    n_heads: usize,
    batch: usize,
    threads: usize,
    cache_len: usize,
    kernel: Kernel,
}

impl Setting {
    pub(super) fn of(p: &PointResult) -> Self {
        Self {
            n_heads: p.n_heads,
            batch: p.batch,
            threads: p.threads,
            cache_len: if p.mode == Mode::Prefill {
                p.context
            } else {
                0
            },
            kernel: p.kernel,
        }
    }
}

/// A table row (a chart series): the configuration a point belongs to. Ordered as the rows
/// are shown: the stored types last, so that the types of one variant sit together.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RowKey {
    setting: Setting,
    variant_rank: (Variant, String),
    n_kv_heads: Option<usize>,
    stored: Stored,
}

impl RowKey {
    pub(super) fn of(p: &PointResult) -> Self {
        Self {
            setting: Setting::of(p),
            variant_rank: (p.variant, p.variant_label()),
            // Descending KV heads read naturally (MHA-like first), hence the reversal.
            n_kv_heads: p.n_kv_heads.map(|k| usize::MAX - k),
            stored: Stored::of(p),
        }
    }

    /// The row of `p` with its stored types left out: a series that runs over them.
    pub(super) fn ignoring_stored(p: &PointResult) -> Self {
        Self {
            stored: Stored {
                weight_dtype: WeightDtype::F32,
                kv_rank: 0,
            },
            ..Self::of(p)
        }
    }
}

/// Which parts of the setting vary across the points of a mode, so that labels name only those.
pub(super) struct Varies {
    n_heads: bool,
    batch: bool,
    threads: bool,
    cache_len: bool,
    kernel: bool,
    /// Whether labels name the stored types (`kv=bf16 w=bf16`): a chart's series do in a set
    /// with types other than f32; a table's rows do not, having columns for them.
    stored: bool,
}

impl Varies {
    /// What varies across `points`, all of one mode; labels name the stored types when
    /// `stored` (see [`shows_stored_types`]).
    pub(super) fn of(points: &[&PointResult], stored: bool) -> Self {
        let distinct = |f: &dyn Fn(&PointResult) -> usize| {
            points.iter().map(|p| f(p)).collect::<BTreeSet<_>>().len() > 1
        };
        Self {
            n_heads: distinct(&|p| p.n_heads),
            batch: distinct(&|p| p.batch),
            threads: distinct(&|p| p.threads),
            cache_len: points.iter().any(|p| p.mode == Mode::Prefill) && distinct(&|p| p.context),
            kernel: points
                .iter()
                .map(|p| p.kernel)
                .collect::<BTreeSet<_>>()
                .len()
                > 1,
            stored,
        }
    }

    /// The row label of `p`: its variant, GQA's KV heads, whatever else varies and, when
    /// labels name them, the stored types, e.g. `gqa kv8`, `mla-absorbed h32 tiled`,
    /// `gqa kv8 kv=bf16 w=bf16`.
    pub(super) fn label(&self, p: &PointResult) -> String {
        let mut s = p.variant_label();
        if let Some(kv) = p.n_kv_heads
            && p.variant == Variant::Gqa
        {
            let _ = write!(s, " kv{kv}");
        }
        self.push_setting(&mut s, p);
        s
    }

    /// The label of `p` without its variant and KV heads (for series that run over them):
    /// only the parts of the setting that vary, each with a leading space.
    pub(super) fn setting_label(&self, p: &PointResult) -> String {
        let mut s = String::new();
        self.push_setting(&mut s, p);
        s
    }

    fn push_setting(&self, s: &mut String, p: &PointResult) {
        if self.n_heads {
            let _ = write!(s, " h{}", p.n_heads);
        }
        if self.batch {
            let _ = write!(s, " b{}", p.batch);
        }
        if self.threads {
            let _ = write!(s, " t{}", p.threads);
        }
        if self.cache_len {
            let _ = write!(s, " cache{}", p.context);
        }
        if self.kernel {
            let _ = write!(s, " {}", p.kernel);
        }
        if self.stored {
            let _ = write!(s, " kv={} w={}", p.kv_dtype, p.weight_dtype);
        }
    }
}

/// The modes, in the order the tables and charts show them.
pub(super) const MODES: [Mode; 2] = [Mode::Prefill, Mode::Decode];

/// The short name of a mode's length axis, as in the table headers: `seq` or `ctx`.
pub(super) fn length_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Prefill => "seq",
        Mode::Decode => "ctx",
    }
}

/// The points of `mode`, in file order.
pub(super) fn of_mode(points: &[PointResult], mode: Mode) -> Vec<&PointResult> {
    points.iter().filter(|p| p.mode == mode).collect()
}

/// Nanoseconds as milliseconds: three significant digits from 0.1 ms to 1 s, three decimals
/// below, whole milliseconds above.
pub(super) fn fmt_ms(ns: f64) -> String {
    let ms = ns / 1e6;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

/// Bytes as MiB: three decimals below 1 MiB, one decimal below 100 MiB, whole MiB above.
pub(super) fn fmt_mib(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 100.0 {
        format!("{mib:.0}")
    } else if mib >= 1.0 {
        format!("{mib:.1}")
    } else {
        format!("{mib:.3}")
    }
}
