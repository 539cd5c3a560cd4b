//! Packed rows: several examples in one row, each reading only its own positions and counting
//! them from 0, give every example the log-probabilities and the adapter gradients it has alone
//! in a row of its own — on every architecture (gemma's sliding window shorter than the longest
//! example), with and without activation checkpointing.

mod common;

use candle_core::{Device, Tensor, Var};
use common::max_abs_diff;
use kefu_model::{Architecture, LoadOptions, LoadedModel};

/// Four examples: their token ids (the targets are the ids shifted by one).
fn examples() -> Vec<Vec<u32>> {
    [17usize, 9, 6, 3]
        .iter()
        .enumerate()
        .map(|(e, &n)| {
            (0..n)
                .map(|p| ((e * 37 + p * 11 + 3) % 120) as u32 + 1)
                .collect()
        })
        .collect()
}

fn targets(ids: &[u32]) -> Vec<u32> {
    ids.iter().map(|t| (t * 7 + 5) % 120 + 1).collect()
}

/// Per-token loss weights of an example (so that gradients depend on every position).
fn weights(ids: &[u32]) -> Vec<f32> {
    ids.iter()
        .enumerate()
        .map(|(p, t)| 0.5 + ((p as u32 + t) % 3) as f32 * 0.25)
        .collect()
}

fn row(ids: &[u32]) -> Tensor {
    Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap()
}

/// Each example alone: its log-probabilities, and every adapter's gradient of the weighted
/// sum over all examples.
fn alone(model: &LoadedModel, vars: &[Var]) -> (Vec<Tensor>, Vec<Tensor>) {
    let mut values = Vec::new();
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
    for ids in examples() {
        let lp = model
            .decoder
            .target_logprobs(&row(&ids), &row(&targets(&ids)))
            .unwrap();
        let w = Tensor::from_vec(weights(&ids), (1, ids.len()), &Device::Cpu).unwrap();
        loss = (loss + (&lp * w).unwrap().sum_all().unwrap()).unwrap();
        values.push(lp.squeeze(0).unwrap());
    }
    (values, gradients(model, vars, loss))
}

/// The same examples packed into three rows of 17: [17], [9, 6] and two positions of
/// padding, [3] and fourteen of padding.
fn packed(model: &LoadedModel, vars: &[Var]) -> (Vec<Tensor>, Vec<Tensor>) {
    let examples = examples();
    let layout = [vec![0usize], vec![1, 2], vec![3]];
    let len = 17;
    let (mut ids, mut tgt, mut w) = (Vec::new(), Vec::new(), Vec::new());
    for row in &layout {
        let mut used = 0;
        for &e in row {
            ids.extend(&examples[e]);
            tgt.extend(targets(&examples[e]));
            w.extend(weights(&examples[e]));
            used += examples[e].len();
        }
        ids.extend(std::iter::repeat_n(0u32, len - used));
        tgt.extend(std::iter::repeat_n(0u32, len - used));
        w.extend(std::iter::repeat_n(0f32, len - used));
    }
    let shape = (layout.len(), len);
    let lengths: Vec<Vec<usize>> = layout
        .iter()
        .map(|row| row.iter().map(|&e| examples[e].len()).collect())
        .collect();
    let lp = model
        .decoder
        .target_logprobs_packed(
            &Tensor::from_vec(ids, shape, &Device::Cpu).unwrap(),
            &Tensor::from_vec(tgt, shape, &Device::Cpu).unwrap(),
            &lengths,
        )
        .unwrap();
    let w = Tensor::from_vec(w, shape, &Device::Cpu).unwrap();
    let loss = (&lp * w).unwrap().sum_all().unwrap();
    let mut values = Vec::new();
    for (r, row) in layout.iter().enumerate() {
        let mut at = 0;
        for &e in row {
            let n = examples[e].len();
            values.push((e, lp.get(r).unwrap().narrow(0, at, n).unwrap()));
            at += n;
        }
    }
    values.sort_by_key(|(e, _)| *e);
    (
        values.into_iter().map(|(_, v)| v).collect(),
        gradients(model, vars, loss),
    )
}

fn gradients(model: &LoadedModel, vars: &[Var], loss: Tensor) -> Vec<Tensor> {
    let mut store = loss.backward().unwrap();
    model.decoder.backward_checkpoints(&mut store).unwrap();
    vars.iter()
        .enumerate()
        .map(|(i, v)| {
            store
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("var {i} has no gradient"))
                .clone()
        })
        .collect()
}

#[test]
fn packed_examples_get_the_values_and_gradients_they_get_alone() {
    for architecture in Architecture::ALL {
        let (_dir, mut model) = common::three_layers(architecture);
        let vars = common::attach_adapters(&mut model, None);
        let (values, grads) = alone(&model, &vars);
        for checkpoint in [false, true] {
            model.decoder.set_checkpointing(checkpoint);
            let (packed_values, packed_grads) = packed(&model, &vars);
            for (e, (a, b)) in values.iter().zip(&packed_values).enumerate() {
                let diff = max_abs_diff(a, b);
                assert!(
                    diff < 1e-4,
                    "{architecture:?} example {e} (checkpointing {checkpoint}): values differ by {diff}"
                );
            }
            for (i, (e, a)) in grads.iter().zip(&packed_grads).enumerate() {
                let scale: f32 = e.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                assert!(scale > 0.0, "{architecture:?} var {i} has no gradient");
                let diff = max_abs_diff(e, a);
                assert!(
                    diff <= 1e-3 * scale,
                    "{architecture:?} var {i} (checkpointing {checkpoint}): {diff} of {scale}"
                );
            }
        }
        model.decoder.set_checkpointing(false);
    }
}

#[test]
fn rows_that_do_not_hold_their_examples_are_refused() {
    let (_dir, model) = common::tiny_model(Architecture::Llama, &LoadOptions::default());
    let ids = Tensor::zeros((2, 5), candle_core::DType::U32, &Device::Cpu).unwrap();
    for (lengths, says) in [
        (vec![vec![3, 3], vec![5]], "do not pack"),
        (vec![vec![2, 0], vec![5]], "do not pack"),
        (vec![vec![5]], "rows of examples"),
    ] {
        let err = model
            .decoder
            .target_logprobs_packed(&ids, &ids, &lengths)
            .unwrap_err();
        assert!(err.to_string().contains(says), "{lengths:?}: {err}");
    }
}
