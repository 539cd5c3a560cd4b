//! Activation checkpointing per layer: the same log-probabilities and the same adapter
//! gradients as the pass that keeps every activation, on both architectures, with adapter
//! dropout on, with two passes before one backward (DPO's chosen and rejected), and with a pass
//! that is never back-propagated (an evaluation) left behind.

mod common;

use candle_core::{Device, Tensor, Var};
use common::max_abs_diff;
use kefu_model::{Architecture, LoadedModel, LoraDropout};

struct Adapted {
    _dir: tempfile::TempDir,
    model: LoadedModel,
    vars: Vec<Var>,
    dropout: LoraDropout,
}

/// A tiny model (three layers, a sequence longer than a head is wide) with adapters on every
/// projection, all sharing one dropout generator.
fn adapted(architecture: Architecture) -> Adapted {
    let (dir, mut model) = common::three_layers(architecture);
    let dropout = LoraDropout::new(0.2, 5);
    let vars = common::attach_adapters(&mut model, Some(dropout.clone()));
    Adapted {
        _dir: dir,
        model,
        vars,
        dropout,
    }
}

fn batch(rows: &[[u32; 7]]) -> Tensor {
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), 7), &Device::Cpu).unwrap()
}

/// Two passes (as DPO scores chosen and rejected), each with its own targets; the loss is
/// their weighted sum. Returns the log-probabilities of both passes and every adapter's
/// gradient, computed with or without checkpointing.
fn run(
    adapted: &mut Adapted,
    checkpoint: bool,
    evaluation_left_behind: bool,
    seed: u64,
) -> (Vec<Tensor>, Vec<Tensor>) {
    let decoder = &mut adapted.model.decoder;
    decoder.set_checkpointing(checkpoint);
    adapted.dropout.reseed(seed);
    if evaluation_left_behind {
        // A pass nobody differentiates (an evaluation between steps).
        let _ = decoder
            .target_logprobs(
                &batch(&[[1, 2, 3, 4, 5, 6, 7]]),
                &batch(&[[2, 3, 4, 5, 6, 7, 8]]),
            )
            .unwrap();
        adapted.dropout.reseed(seed);
    }
    let first = decoder
        .target_logprobs(
            &batch(&[[5, 9, 77, 120, 3, 44, 6], [8, 8, 31, 2, 90, 17, 4]]),
            &batch(&[[9, 77, 120, 3, 44, 6, 2], [8, 31, 2, 90, 17, 4, 5]]),
        )
        .unwrap();
    let second = decoder
        .target_logprobs(
            &batch(&[[12, 13, 14, 15, 16, 17, 18]]),
            &batch(&[[13, 14, 15, 16, 17, 18, 19]]),
        )
        .unwrap();
    let weights = Tensor::new(
        &[
            [0f32, 0.0, 1.0, 1.0, 1.0, 0.5, 1.0],
            [0.0, 1.0, 1.0, 2.0, 0.0, 1.0, 1.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let loss = ((&first * &weights).unwrap().sum_all().unwrap()
        - (second.sum_all().unwrap() * 0.5).unwrap())
    .unwrap();
    let mut store = loss.backward().unwrap();
    decoder.backward_checkpoints(&mut store).unwrap();
    decoder.set_checkpointing(false);
    let grads = adapted
        .vars
        .iter()
        .enumerate()
        .map(|(i, v)| {
            store
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("var {i} has no gradient"))
                .clone()
        })
        .collect();
    (vec![first.detach(), second.detach()], grads)
}

#[test]
fn checkpointed_layers_give_the_same_values_and_adapter_gradients() {
    for architecture in Architecture::ALL {
        let mut adapted = adapted(architecture);
        let (values, grads) = run(&mut adapted, false, false, 11);
        for left_behind in [false, true] {
            let (checkpointed, checkpointed_grads) = run(&mut adapted, true, left_behind, 11);
            for (e, a) in values.iter().zip(&checkpointed) {
                let diff = max_abs_diff(e, a);
                assert!(diff < 1e-5, "{architecture:?} values differ by {diff}");
            }
            for (i, (e, a)) in grads.iter().zip(&checkpointed_grads).enumerate() {
                let scale: f32 = e.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                assert!(scale > 0.0, "{architecture:?} var {i} has no gradient");
                let diff = max_abs_diff(e, a);
                assert!(
                    diff <= 1e-4 * scale,
                    "{architecture:?} var {i} (evaluation left behind: {left_behind}): \
                     {diff} of {scale}"
                );
            }
        }
        // Dropout is on: another seed gives other masks, so other values (the parity above
        // holds with dropout, not only for a model that drops nothing).
        let (other, _) = run(&mut adapted, false, false, 12);
        assert!(
            max_abs_diff(&values[0], &other[0]) > 1e-4,
            "{architecture:?}"
        );
        assert!(!adapted.model.decoder.checkpointing());
    }
}

#[test]
fn a_pass_whose_output_got_no_gradient_gives_the_adapters_none() {
    let mut adapted = adapted(Architecture::Qwen2);
    let decoder = &mut adapted.model.decoder;
    decoder.set_checkpointing(true);
    let ids = batch(&[[1, 2, 3, 4, 5, 6, 7]]);
    let targets = batch(&[[2, 3, 4, 5, 6, 7, 8]]);
    let values = decoder.target_logprobs(&ids, &targets).unwrap();
    // The store of an unrelated loss: the pass's output got no gradient, so it is dropped
    // and no adapter gets a gradient from it.
    let unrelated = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let mut store = unrelated.as_tensor().sum_all().unwrap().backward().unwrap();
    decoder.backward_checkpoints(&mut store).unwrap();
    assert!(
        adapted
            .vars
            .iter()
            .all(|v| store.get(v.as_tensor()).is_none())
    );
    assert_eq!(values.dims(), &[1, 7]);
}
