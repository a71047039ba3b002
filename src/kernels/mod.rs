//! Numerical kernels: RoPE, RMSNorm, softmax, projections and the causal grouped attention
//! core; the stored types of docs/design.md §5 (`convert.rs`: f32 to bf16, f16 and int8 rows
//! and back, bit for bit) and decode's passes over them (`narrow.rs`). They know nothing of
//! layers, caches or files.
//!
//! # Which attention kernel runs when
//! Both kernels compute the same thing under one contract (see [`attention`]); a layer runs
//! the one its [`Kernel`] names, and every layer runs [`Kernel::Tiled`] unless told otherwise.
//! - [`naive_attention`] (`naive.rs`, [`Kernel::Naive`]): one task per (sequence, query head),
//!   the whole `s_q × s_k` score block materialised, faer matmuls around a row softmax
//!   (`softmax.rs`). The plain formulation, kept as the baseline the tiled kernel is measured
//!   against.
//! - [`tiled_attention`] (`tiled.rs`, [`Kernel::Tiled`], the default): the query heads of a KV
//!   group packed into one block, keys in blocks with an online softmax, long key ranges split
//!   across threads when there are fewer tasks than threads (decode). A packed block of at
//!   most eight rows (decode, or a short step of a small group) takes its keys in one long
//!   block and, when they are contiguous in memory, gets its scores from the few-row score
//!   loop of `simd.rs`; larger blocks (prefill) take keys 256 at a time, on a CPU with
//!   AVX-512F through the register-blocked micro-kernels of `microkernel.rs` (scores, a
//!   softmax vectorised across query rows, weighted values), elsewhere with faer's products.
//!
//! # Reading a cache stored in bf16, f16 or int8
//! The operands' keys and values are [`KvHead`]s: f32 rows (the f32 fast paths above, unchanged)
//! or rows in a stored type ([`StoredRows`]; MLA's int8 latent as two parts, `c_kv` and
//! `k_rope`, with a scale each). The tiled kernel reads them by the size of its packed block:
//! - at most eight rows (decode): [`narrow_scores`] and [`narrow_add_values`] (`narrow.rs`),
//!   decode's two passes over a stored KV head, each stored row read once and widened in
//!   registers, over the same one long block of keys (and the same thread split of long
//!   ranges) as the f32 few-row path; no f32 copy of the cache is made, so decode reads a
//!   half (bf16, f16) or about a quarter (int8) of the f32 bytes. Split int8 keys are scored
//!   part by part against the queries' matching columns and the scores added;
//! - larger blocks (prefill): each block of keys and values is widened into f32 buffers,
//!   allocated once per task and reused, and read by the f32 block loop.
//!
//! The naive kernel widens each stored head to f32 whole before its products. [`narrow_path`]
//! names the code the narrow kernels run on this CPU.
//!
//! # Projections
//! [`project`] takes a [`Weight`] (`weight.rs`) stored in f32 or bf16 (`projection.rs`): at most
//! eight rows (decode) read each weight once (bf16 through [`narrow_add_values`] and
//! [`narrow_scores`], f32 through its own fused multiply-add loop), each thread streaming
//! long runs of its own part of the weight; more rows go to faer (bf16 widened
//! [`WEIGHT_ROW_BLOCK`] rows at a time into one reused buffer). MLA's per-head products run
//! every head in one parallel region ([`matmul_heads_transposed`], [`matmul_heads`]). The bf16
//! reads run on the code [`narrow_path`] names.
//!
//! Shared pieces, and the only modules a kernel file imports: `layout.rs` (the operand and
//! head-layout types), `convert.rs` (the stored types' bits), `simd.rs` (the exponential, the
//! lane reductions, how each element type reads as f32 lanes, the few-row scores and the CPU
//! feature checks) and `softmax.rs`; besides them `projection.rs` imports `narrow.rs` and
//! `weight.rs`, whose public kernels and types it is built on, and `tiled.rs` imports
//! `narrow.rs` and `microkernel.rs` (prefill's AVX-512 block loop, used only when the CPU
//! has AVX-512F, checked at run time). On x86-64 with AVX2 and FMA (checked at run time), the
//! few-row scores run on explicit AVX2 instructions and the tiled kernel's block loop is
//! compiled for AVX2 + FMA; otherwise both run as compiled for the x86-64 baseline, like the
//! naive kernel's softmax. The narrow kernels want F16C besides (checked with the others).
//! faer picks its own instructions for the matmuls.

mod convert;
mod decode;
mod layout;
mod microkernel;
mod naive;
mod narrow;
#[cfg(target_arch = "x86_64")]
mod narrow512;
mod norm;
mod projection;
mod rope;
mod simd;
mod softmax;
mod tiled;
mod weight;

pub use convert::{
    INT8_NON_FINITE, bf16, dequantize_int8, f16, quantize_int8, round_to_bf16, round_to_f16,
    widen_bf16, widen_f16,
};
pub use decode::decode_path;
pub use layout::{AttentionOperands, HeadLayout, KvHead, heads_to_rows};
pub use microkernel::prefill_path;
pub use naive::naive_attention;
pub use narrow::{StoredRows, narrow_add_values, narrow_path, narrow_scores};
pub use norm::rms_norm_rows;
pub use projection::{
    WEIGHT_ROW_BLOCK, matmul, matmul_heads, matmul_heads_transposed, matmul_threads, matmul_weight,
    matmul_weight_transposed, project, project_to,
};
pub use rope::RopeTable;
pub use simd::{RowsRef, fast_exp};
pub use softmax::{causal_softmax_rows, softmax_in_place};
pub use tiled::tiled_attention;
pub use weight::{Weight, WeightRef};

use crate::config::Kernel;

/// Causal grouped attention of a batch of sequences on `kernel`.
///
/// Query head `h` reads KV head `h / (n_heads / n_kv_heads)`; query `i` of a sequence sees its
/// keys `0..=first_query_position + i`. Every sequence has the same `s_q`; each may hold a
/// different number of keys. `out` is head-major, `(batch, n_heads, s_q, v_dim)`: the block of
/// sequence `b`, head `h` is `out[((b · n_heads) + h) · s_q · v_dim ..][.. s_q · v_dim]`,
/// row-major `(s_q, v_dim)`.
///
/// A NaN or an infinity in an operand makes NaN every output that depends on it and leaves
/// the others as they were: a query element its own output row, a key element the rows of
/// its group's heads whose query sees that key (an infinite score poisons the row even where
/// plain maths would give the key a weight of 0), a value element its column of those rows.
/// Keys a query cannot see never touch its output, whatever they hold.
///
/// # Panics
/// If the operands disagree with `layout` or `out` has the wrong length (the layers build
/// them; this is not user input).
pub fn attention(
    kernel: Kernel,
    seqs: &[AttentionOperands<'_>],
    layout: &HeadLayout,
    out: &mut [f32],
) {
    match kernel {
        Kernel::Naive => naive_attention(seqs, layout, out),
        Kernel::Tiled => tiled_attention(seqs, layout, out),
    }
}
