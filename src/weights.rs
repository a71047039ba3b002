//! Deterministic weights and inputs from a seed (docs/design.md §1): weights with variance `1 / d_in`,
//! RMSNorm scales near 1, inputs standard normal.
//!
//! The generator is written here (SplitMix64 and Box–Muller) rather than taken from `rand`, so
//! that the same seed gives the same numbers on every run and in every future version of the
//! tool, whatever happens to a dependency's stream. Each tensor draws from its own stream, keyed
//! by the seed and the tensor's name, so adding a weight never shifts the others.

use crate::tensor::Matrix;

/// A SplitMix64 stream.
#[derive(Clone, Debug)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// The stream for `(seed, name)`.
    pub fn new(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, mixed with the seed.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in name.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self {
            state: seed ^ hash.rotate_left(17),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1)`, never exactly 0.
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller, one value per call).
    pub fn next_normal(&mut self) -> f64 {
        let (u1, u2) = (self.next_open01(), self.next_open01());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A `rows × cols` matrix of normal values with standard deviation `std`.
    pub fn normal_matrix(&mut self, rows: usize, cols: usize, std: f64) -> Matrix {
        let data = (0..rows * cols)
            .map(|_| (self.next_normal() * std) as f32)
            .collect();
        Matrix::from_vec(rows, cols, data).expect("length is rows * cols")
    }
}

/// A projection weight `(d_in, d_out)` with variance `1 / d_in`, so activations keep unit scale.
pub fn projection_weight(seed: u64, name: &str, d_in: usize, d_out: usize) -> Matrix {
    SeededRng::new(seed, name).normal_matrix(d_in, d_out, 1.0 / (d_in as f64).sqrt())
}

/// An RMSNorm scale `(1, width)`, uniform in `[0.9, 1.1]`: near 1 like a trained scale, but not
/// exactly 1, so a test notices when it is ignored.
pub fn norm_scale(seed: u64, name: &str, width: usize) -> Matrix {
    let mut rng = SeededRng::new(seed, name);
    let data = (0..width)
        .map(|_| (0.9 + 0.2 * rng.next_open01()) as f32)
        .collect();
    Matrix::from_vec(1, width, data).expect("length is width")
}

/// Standard normal inputs `(rows, d_model)` for the stream `name`.
pub fn input(seed: u64, name: &str, rows: usize, d_model: usize) -> Matrix {
    SeededRng::new(seed, name).normal_matrix(rows, d_model, 1.0)
}
