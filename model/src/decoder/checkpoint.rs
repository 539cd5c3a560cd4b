//! Activation checkpointing per layer for training. A checkpointed forward pass keeps only each
//! layer's input (`seq × hidden` values) and drops the rest of the layer's activations — the
//! attention scores above all, `heads × seq²` per layer. The backward pass then recomputes one
//! layer at a time, last to first, with its graph, and back-propagates through it alone: memory
//! for one layer's activations instead of all of them, for one more forward pass of compute.
//!
//! The loss's own backward (`loss.backward()`) stops at the last layer's output, which is kept
//! as a variable; [`Decoder::backward_checkpoints`] carries its gradient down the layers and adds
//! every adapter's gradient to the same store. Adapter dropout draws the same masks in the
//! recomputation: each layer reseeds the shared generator from a seed kept with the pass.

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rand::Rng;

use super::{Decoder, Masks};
use crate::error::Result;
use crate::linear::{LoraDropout, Mode};

/// What one checkpointed forward pass keeps.
struct Tape {
    /// Each layer's input, as a variable so that its gradient comes out of the recomputation.
    inputs: Vec<Var>,
    /// The last layer's output: the loss's backward pass ends here.
    top: Var,
    masks: Masks,
    dropout: Option<LayerDropout>,
}

/// The passes waiting for their backward, in order.
#[derive(Default)]
pub(crate) struct Tapes(Mutex<Vec<Tape>>);

impl std::fmt::Debug for Tapes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tapes")
    }
}

impl Tapes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Tape>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The adapter-dropout generator of a training pass and the seed its layers reseed it from.
#[derive(Clone)]
pub(super) struct LayerDropout {
    dropout: LoraDropout,
    seed: u64,
}

impl LayerDropout {
    /// A seed for a new pass, drawn from the generator (`None` when no adapter drops).
    pub(super) fn draw(decoder: &Decoder) -> Option<Self> {
        let dropout = decoder.dropout()?;
        let seed = dropout
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .random::<u64>();
        Some(Self { dropout, seed })
    }

    /// Sets the generator for `layer`'s masks.
    pub(super) fn reseed(&self, layer: usize) {
        self.dropout.reseed(
            self.seed
                .wrapping_add((layer as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        );
    }
}

impl Decoder {
    /// Turns activation checkpointing per layer on or off for training passes (inference is
    /// never checkpointed). Passes not yet back-propagated are dropped either way.
    pub fn set_checkpointing(&mut self, on: bool) {
        self.checkpoints = on.then(Default::default);
    }

    pub fn checkpointing(&self) -> bool {
        self.checkpoints.is_some()
    }

    /// The shared adapter-dropout generator, when any adapter drops.
    fn dropout(&self) -> Option<LoraDropout> {
        self.layers
            .iter()
            .flat_map(|b| {
                [
                    &b.self_attn.qkv,
                    &b.self_attn.o_proj,
                    &b.mlp.gate_up,
                    &b.mlp.down_proj,
                ]
            })
            .flat_map(|group| group.parts())
            .filter_map(|linear| linear.lora.as_ref()?.dropout.clone())
            .find(|d| d.p > 0.0)
    }

    /// The layers on the embeddings `x`, keeping only each layer's input (see the module).
    pub(super) fn checkpointed_layers(
        &self,
        x: Tensor,
        masks: Masks,
        dropout: Option<LayerDropout>,
        tapes: &Tapes,
    ) -> Result<Tensor> {
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = x;
        for (i, block) in self.layers.iter().enumerate() {
            if let Some(dropout) = &dropout {
                dropout.reseed(i);
            }
            let input = Var::from_tensor(&x)?;
            // The output's graph (this layer's activations) is dropped with the output.
            x = block
                .forward(input.as_tensor(), &masks, 0, None, Mode::Training)?
                .detach();
            inputs.push(input);
        }
        let top = Var::from_tensor(&x)?;
        let out = top.as_tensor().clone();
        tapes.lock().push(Tape {
            inputs,
            top,
            masks,
            dropout,
        });
        Ok(out)
    }

    /// Completes `grads` (the loss's backward pass) through the layers of every checkpointed
    /// pass since the last call: each layer is recomputed and back-propagated, last to first,
    /// and the adapters' gradients are added to `grads`. A pass whose output got no gradient
    /// (evaluation, a reference model) is dropped. Does nothing when checkpointing is off.
    pub fn backward_checkpoints(&self, grads: &mut GradStore) -> Result<()> {
        let Some(tapes) = &self.checkpoints else {
            return Ok(());
        };
        let passes = std::mem::take(&mut *tapes.lock());
        for tape in passes.into_iter().rev() {
            let Some(mut upstream) = grads.remove(tape.top.as_tensor()) else {
                continue;
            };
            for (i, block) in self.layers.iter().enumerate().rev() {
                if let Some(dropout) = &tape.dropout {
                    dropout.reseed(i);
                }
                let input = &tape.inputs[i];
                let output =
                    block.forward(input.as_tensor(), &tape.masks, 0, None, Mode::Training)?;
                // d(sum(output · upstream)) / d(anything) is upstream carried back: the
                // layer's gradients given the gradient at its output.
                let mut layer = (output * &upstream)?.sum_all()?.backward()?;
                match layer.remove(input.as_tensor()) {
                    Some(g) => upstream = g,
                    None => break,
                }
                grads.extend(layer)?;
            }
        }
        Ok(())
    }

    /// Drops passes not yet back-propagated (a failed step).
    pub fn clear_checkpoints(&self) {
        if let Some(tapes) = &self.checkpoints {
            tapes.lock().clear();
        }
    }
}
