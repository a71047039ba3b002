//! The library's one error type.

use thiserror::Error;

/// Everything the library can refuse. User input reaches one of these, never a panic.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// A configuration field holds a value the layer cannot be built with.
    #[error("invalid config: `{field}` = {value}: {reason}")]
    InvalidConfig {
        /// The field's name: a layer's as in the Hugging Face configs
        /// ([`ModelField::name`](crate::config::ModelField::name): `n_kv_heads`,
        /// `kv_lora_rank`, ...), or a request's (`context`, `budget_gib`, `seq_len`, ...).
        field: &'static str,
        /// The offending value, as the user wrote it.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// An operand has the wrong shape for the layer or the cache.
    #[error("shape mismatch for {what}: expected {expected}, got {actual}")]
    Shape {
        /// Which operand.
        what: &'static str,
        /// The shape the layer needs, e.g. `(6, 64)` or `rows divisible by batch 3`.
        expected: String,
        /// The shape it was given.
        actual: String,
    },
    /// Appending would run past the cache's capacity. The cache is left unchanged.
    #[error(
        "KV cache full: sequence {sequence} holds {len} of {capacity} tokens and cannot take {requested} more"
    )]
    CacheFull {
        /// Which sequence of the batch.
        sequence: usize,
        /// Tokens it already holds.
        len: usize,
        /// Tokens it can hold.
        capacity: usize,
        /// Tokens the step tried to append.
        requested: usize,
    },
    /// The cache could not be allocated (too large for this machine).
    #[error("cannot allocate a KV cache of {bytes} bytes")]
    Allocation {
        /// Bytes requested.
        bytes: usize,
    },
}

/// Shorthand for the library's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
