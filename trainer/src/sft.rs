//! Supervised fine-tuning with LoRA: the loss is the mean negative log-likelihood of the
//! answers' tokens (prompt tokens and padding predict nothing), run by the shared loop in
//! [`crate::run`].

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use kefu_model::LoadedModel;

use crate::data::Tokenized;
use crate::error::Result;
use crate::run::{BatchLoss, Evaluation, Objective, Report, TrainConfig, train_loop};

/// Inputs `(batch, len)` and targets, padded on the right (padding predicts nothing).
fn collate(examples: &[&Tokenized], device: &Device) -> Result<(Tensor, Tensor, Tensor, usize)> {
    let len = examples.iter().map(|e| e.input.len()).max().unwrap_or(1);
    let mut input = Vec::with_capacity(examples.len() * len);
    let mut targets = Vec::with_capacity(examples.len() * len);
    let mut mask = Vec::with_capacity(examples.len() * len);
    let mut counted = 0;
    for e in examples {
        for i in 0..len {
            input.push(e.input.get(i).copied().unwrap_or(0));
            let target = e.targets.get(i).copied().flatten();
            targets.push(target.unwrap_or(0));
            mask.push(if target.is_some() { 1f32 } else { 0.0 });
            counted += usize::from(target.is_some());
        }
    }
    let shape = (examples.len(), len);
    Ok((
        Tensor::from_vec(input, shape, device)?,
        Tensor::from_vec(targets, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
        counted,
    ))
}

/// Per example, the summed log-probability of its target tokens `(batch,)`, and how many
/// target tokens there were in all.
pub fn answer_logprobs(model: &LoadedModel, examples: &[&Tokenized]) -> Result<(Tensor, usize)> {
    let device = model.decoder.device();
    let (input, targets, mask, counted) = collate(examples, device)?;
    let picked = model.decoder.target_logprobs(&input, &targets)?;
    Ok(((picked * mask)?.sum(1)?, counted))
}

/// Sum of the negative log-likelihoods of the target tokens, and how many there were.
pub fn answer_nll(model: &LoadedModel, examples: &[&Tokenized]) -> Result<(Tensor, usize)> {
    let (logprobs, counted) = answer_logprobs(model, examples)?;
    Ok((logprobs.sum_all()?.neg()?, counted))
}

/// Mean loss per answer token over `examples` (no gradients kept).
pub fn mean_loss(model: &LoadedModel, examples: &[Tokenized], batch_size: usize) -> Result<f64> {
    let mut total = 0f64;
    let mut count = 0usize;
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Tokenized> = chunk.iter().collect();
        let (nll, n) = answer_nll(model, &refs)?;
        total += nll.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += n;
    }
    Ok(if count == 0 {
        f64::NAN
    } else {
        total / count as f64
    })
}

/// SFT as an [`Objective`].
struct Sft<'a> {
    train: &'a [Tokenized],
    eval: &'a [Tokenized],
    batch_size: usize,
}

impl Objective for Sft<'_> {
    fn items(&self) -> usize {
        self.train.len()
    }

    fn lengths(&self) -> Vec<usize> {
        self.train.iter().map(|e| e.input.len()).collect()
    }

    fn weight(&self, batch: &[usize]) -> f64 {
        batch
            .iter()
            .map(|&i| self.train[i].answer_tokens())
            .sum::<usize>() as f64
    }

    fn batch_loss(&self, model: &LoadedModel, batch: &[usize]) -> Result<BatchLoss> {
        let refs: Vec<&Tokenized> = batch.iter().map(|&i| &self.train[i]).collect();
        let tokens = refs.iter().map(|e| e.input.len()).sum();
        let (nll, _) = answer_nll(model, &refs)?;
        Ok((nll, Vec::new(), tokens))
    }

    fn evaluate(&self, model: &LoadedModel) -> Result<Evaluation> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let loss = mean_loss(model, self.eval, self.batch_size)?;
        Ok(Some((loss, vec![("perplexity", loss.exp())])))
    }
}

/// Trains a LoRA adapter on `train`, evaluating on `eval` (see [`train_loop`]).
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut LoadedModel,
    base_name: &str,
    train: &[Tokenized],
    eval: &[Tokenized],
    config: &TrainConfig,
    output: &Path,
    resume: bool,
    on_step: impl FnMut(usize, usize, f64) -> bool,
) -> Result<Report> {
    let objective = Sft {
        train,
        eval,
        batch_size: config.batch_size,
    };
    train_loop(
        model, base_name, &objective, config, output, resume, on_step,
    )
}
