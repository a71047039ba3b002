//! Tokens a model's layers hold at a context: every token in a global layer, at most the
//! window in a windowed one (its rolling cache never holds more), and the largest context
//! whose cache fits a number of token slots.

use serde::Serialize;

use crate::presets::{SlidingWindow, WindowLayers};

/// How many of a model's layers cache how many tokens; the same for every row of a plan (the
/// hypothetical rows keep the model's window pattern).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LayerTokens {
    n_layers: u64,
    /// Layers with a window (0 without one).
    windowed: u64,
    /// Their window in tokens (unused when `windowed` is 0).
    window: u64,
}

impl LayerTokens {
    pub fn new(n_layers: usize, window: Option<SlidingWindow>) -> Self {
        let (windowed, window) = window.map_or((0, 0), |w| {
            (w.layers.windowed(n_layers) as u64, w.tokens as u64)
        });
        Self {
            n_layers: n_layers as u64,
            windowed,
            window,
        }
    }

    /// Layers that cache the whole context.
    pub fn global(&self) -> u64 {
        self.n_layers - self.windowed
    }

    /// Tokens one sequence of `context` tokens holds over all layers (a token held by two
    /// layers counts twice): `Σ_layers min(context, window of the layer)`. `None` past 2^64.
    pub fn at(&self, context: u64) -> Option<u64> {
        let windowed = self.windowed as u128 * context.min(self.window) as u128;
        let global = self.global() as u128 * context as u128;
        u64::try_from(windowed + global).ok()
    }

    /// The largest context whose tokens over all layers ([`LayerTokens::at`]) are at most
    /// `slots`; `None` when there is no largest: every layer is windowed and the whole window
    /// fits, so the cache stops growing within the slots.
    pub fn largest_context(&self, slots: u64) -> Option<u64> {
        let slots = slots as u128;
        let (n_layers, windowed) = (self.n_layers as u128, self.windowed as u128);
        let window = self.window as u128;
        // Within the window every layer holds every token.
        if windowed == 0 || slots < n_layers * window {
            return Some((slots / n_layers) as u64);
        }
        // Past it each token adds one slot per global layer.
        let global = n_layers - windowed;
        (global > 0).then(|| ((slots - windowed * window) / global) as u64)
    }
}

/// The window of a plan: which layers keep it, and what they hold at the plan's context.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowFigures {
    /// Tokens a windowed layer attends to and caches at most.
    pub tokens: usize,
    /// Which layers are windowed.
    pub layers: WindowLayers,
    /// Layers with the window.
    pub windowed_layers: usize,
    /// Layers that attend to, and cache, the whole context.
    pub global_layers: usize,
    /// Tokens each windowed layer holds at the plan's context: `min(context, tokens)`.
    pub windowed_layer_tokens: usize,
}

impl WindowFigures {
    pub(super) fn new(window: SlidingWindow, n_layers: usize, context: usize) -> Self {
        let windowed = window.layers.windowed(n_layers);
        Self {
            tokens: window.tokens,
            layers: window.layers,
            windowed_layers: windowed,
            global_layers: n_layers - windowed,
            windowed_layer_tokens: context.min(window.tokens),
        }
    }

    /// What a row's derivation adds: the window, and where; a hypothetical row (`own` false)
    /// says that it keeps the model's.
    pub(super) fn derivation_note(&self, own: bool) -> String {
        let which = match self.layers {
            WindowLayers::All => format!("all {} layers", self.windowed_layers),
            WindowLayers::Alternate => format!(
                "{} of {} layers (every other one, from the first)",
                self.windowed_layers,
                self.windowed_layers + self.global_layers
            ),
        };
        let whose = if own {
            "sliding window"
        } else {
            "keeps the model's sliding window"
        };
        format!("; {whose}: {which} cache at most {} tokens", self.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n_layers: usize, window: usize, layers: WindowLayers) -> LayerTokens {
        LayerTokens::new(
            n_layers,
            Some(SlidingWindow {
                tokens: window,
                layers,
            }),
        )
    }

    #[test]
    fn a_windowed_layer_holds_at_most_its_window() {
        let mistral = tokens(32, 4096, WindowLayers::All);
        assert_eq!(mistral.at(1000), Some(32 * 1000));
        assert_eq!(mistral.at(32768), Some(32 * 4096));
        let gemma = tokens(42, 4096, WindowLayers::Alternate);
        assert_eq!(gemma.at(8192), Some(21 * 4096 + 21 * 8192));
        assert_eq!(
            tokens(3, 10, WindowLayers::Alternate).at(20),
            Some(2 * 10 + 20)
        );
        assert_eq!(LayerTokens::new(32, None).at(8192), Some(32 * 8192));
        assert_eq!(LayerTokens::new(2, None).at(u64::MAX), None);
    }

    /// The largest context fits and one more token does not, on both sides of the window.
    #[test]
    fn largest_context_fits_and_one_more_does_not() {
        let models = [
            tokens(42, 4096, WindowLayers::Alternate),
            tokens(3, 10, WindowLayers::Alternate),
            tokens(32, 4096, WindowLayers::All),
            LayerTokens::new(32, None),
        ];
        for model in models {
            for slots in [0, 1, 31, 32, 100_000, 32 * 4096 - 1, 32 * 4096, 10_000_000] {
                match model.largest_context(slots) {
                    Some(c) => {
                        assert!(model.at(c).unwrap() <= slots, "{model:?} {slots}");
                        assert!(model.at(c + 1).unwrap() > slots, "{model:?} {slots}");
                    }
                    None => {
                        assert_eq!(model.global(), 0);
                        assert!(model.at(u64::MAX).unwrap() <= slots, "{model:?} {slots}");
                    }
                }
            }
        }
    }
}
