//! What DPO and KTO share: objectives scored against the model training starts from. Each item
//! has two sequences (DPO: chosen and rejected; KTO: the answer, and the prompt with another
//! example's answer), whose summed answer log-probabilities under the starting model — the
//! reference — are computed once before training (the fresh adapter has B = 0, so the policy
//! starts equal to it).

use std::path::Path;

use candle_core::Tensor;
use kefu_model::LoadedModel;

use crate::data::Tokenized;
use crate::error::{Result, TrainError};
use crate::run::{
    BatchLoss, Evaluation, Figures, Objective, Report, TrainConfig, evaluate_in_chunks, train_loop,
    used_items,
};
use crate::sft::answer_logprobs;

/// An item of a reference-based objective.
pub trait Scored {
    /// Its two sequences, scored together with the rest of a batch.
    fn sequences(&self) -> [&Tokenized; 2];
}

/// An item's length for batching: its longer sequence.
fn length<T: Scored>(item: &T) -> usize {
    let [a, b] = item.sequences();
    a.input.len().max(b.input.len())
}

/// Summed answer log-probabilities of every item's first and second sequence, `(n,)` each, in
/// one forward pass.
fn logprobs<T: Scored>(model: &LoadedModel, items: &[&T]) -> Result<(Tensor, Tensor)> {
    let mut all: Vec<&Tokenized> = items.iter().map(|i| i.sequences()[0]).collect();
    all.extend(items.iter().map(|i| i.sequences()[1]));
    let (logprobs, _) = answer_logprobs(model, &all)?;
    let n = items.len();
    Ok((logprobs.narrow(0, 0, n)?, logprobs.narrow(0, n, n)?))
}

/// Reference log-probabilities (no gradients) of the items `used` marks (`None` for the
/// others, which the run never reaches).
fn reference<T: Scored>(
    model: &LoadedModel,
    items: &[T],
    used: &[bool],
    batch: usize,
) -> Result<Vec<Option<(f32, f32)>>> {
    let mut out = vec![None; items.len()];
    let wanted: Vec<usize> = (0..items.len()).filter(|&i| used[i]).collect();
    for chunk in wanted.chunks(batch.max(1)) {
        let refs: Vec<&T> = chunk.iter().map(|&i| &items[i]).collect();
        let (first, second) = logprobs(model, &refs)?;
        let first = first.detach().to_vec1::<f32>()?;
        let second = second.detach().to_vec1::<f32>()?;
        for ((&i, a), b) in chunk.iter().zip(first).zip(second) {
            out[i] = Some((a, b));
        }
    }
    Ok(out)
}

/// A batch's two sequences' summed answer log-probabilities under the policy (with gradients)
/// and under the reference, `(n,)` each.
pub struct Scores {
    pub policy: [Tensor; 2],
    pub reference: [Tensor; 2],
}

/// A batch's summed loss and summed figures, given its items, their scores and β.
pub type BatchFigures<T> = fn(&[&T], Scores, f64) -> Result<(Tensor, Figures)>;

/// Scores `items` with the policy, pairs them with their `references`, and applies the stage's
/// `figures`.
fn scored_figures<T: Scored>(
    model: &LoadedModel,
    items: &[&T],
    references: &[(f32, f32)],
    beta: f64,
    figures: BatchFigures<T>,
) -> Result<(Tensor, Figures)> {
    let device = model.decoder.device();
    let (first, second) = logprobs(model, items)?;
    let column = |pick: fn(&(f32, f32)) -> f32| -> Result<Tensor> {
        let values: Vec<f32> = references.iter().map(pick).collect();
        Ok(Tensor::from_vec(values, items.len(), device)?)
    };
    let scores = Scores {
        policy: [first, second],
        reference: [column(|r| r.0)?, column(|r| r.1)?],
    };
    figures(items, scores, beta)
}

struct AgainstReference<'a, T> {
    train: &'a [T],
    eval: &'a [T],
    train_reference: Vec<Option<(f32, f32)>>,
    eval_reference: Vec<(f32, f32)>,
    beta: f64,
    batch_size: usize,
    figures: BatchFigures<T>,
    /// What an item is called in messages ("pair", "example").
    what: &'static str,
}

impl<T: Scored> Objective for AgainstReference<'_, T> {
    fn items(&self) -> usize {
        self.train.len()
    }

    fn lengths(&self) -> Vec<usize> {
        self.train.iter().map(length).collect()
    }

    fn weight(&self, batch: &[usize]) -> f64 {
        batch.len() as f64
    }

    fn batch_loss(&self, model: &LoadedModel, batch: &[usize]) -> Result<BatchLoss> {
        let items: Vec<&T> = batch.iter().map(|&i| &self.train[i]).collect();
        let references: Vec<(f32, f32)> = batch
            .iter()
            .map(|&i| {
                self.train_reference[i].ok_or_else(|| {
                    TrainError::Config(format!(
                        "{} {i} has no reference log-probabilities (changed settings on \
                         --resume?)",
                        self.what
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let tokens = items
            .iter()
            .map(|item| {
                let [a, b] = item.sequences();
                a.input.len() + b.input.len()
            })
            .sum();
        let (loss, figures) = scored_figures(model, &items, &references, self.beta, self.figures)?;
        Ok((loss, figures, tokens))
    }

    fn evaluate(&self, model: &LoadedModel) -> Result<Evaluation> {
        evaluate_in_chunks(
            self.eval,
            &self.eval_reference,
            self.batch_size,
            |items, references| scored_figures(model, items, references, self.beta, self.figures),
        )
    }
}

/// Trains a LoRA adapter on `train` with the objective `figures` computes, evaluating on
/// `eval` (see [`train_loop`]); the reference is `model` as given (before any adapter).
#[allow(clippy::too_many_arguments)]
pub fn train<T: Scored>(
    model: &mut LoadedModel,
    base_name: &str,
    train: &[T],
    eval: &[T],
    config: &TrainConfig,
    output: &Path,
    resume: bool,
    on_step: impl FnMut(usize, usize, f64) -> bool,
    figures: BatchFigures<T>,
    what: &'static str,
) -> Result<Report> {
    if config.beta <= 0.0 {
        return Err(TrainError::Config("beta must be positive".into()));
    }
    let lengths: Vec<usize> = train.iter().map(length).collect();
    let used = used_items(&lengths, config);
    let eval_reference = reference(model, eval, &vec![true; eval.len()], config.batch_size)?
        .into_iter()
        .flatten()
        .collect();
    let objective = AgainstReference {
        train,
        eval,
        train_reference: reference(model, train, &used, config.batch_size)?,
        eval_reference,
        beta: config.beta,
        batch_size: config.batch_size,
        figures,
        what,
    };
    train_loop(
        model, base_name, &objective, config, output, resume, on_step,
    )
}
