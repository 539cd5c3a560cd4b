//! Supervised fine-tuning with LoRA: the loss is the mean negative log-likelihood of the
//! answers' tokens (prompt tokens and padding predict nothing), run by the shared loop in
//! [`crate::run`].

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use kefu_model::LoadedModel;

use crate::data::Tokenized;
use crate::error::Result;
use crate::run::{BatchLoss, Evaluation, Objective, Report, TrainConfig, train_loop};

/// A batch laid out for one forward pass: examples packed into rows as long as the longest
/// (each attends only to itself, so padding between examples costs no compute).
struct Batch {
    input: Tensor,
    targets: Tensor,
    /// Per row, its examples' lengths in order.
    lengths: Vec<Vec<usize>>,
    /// `(rows × len, examples)`: 1 where a position has a target of that example (prompt
    /// tokens and padding have none), to sum each example's log-probabilities in the batch's
    /// order.
    owner: Tensor,
    counted: usize,
}

/// Which examples share each row: longest first, each into the first row with room left
/// (rows as long as the longest example).
fn pack(lengths: &[usize]) -> Vec<Vec<usize>> {
    let len = lengths.iter().copied().max().unwrap_or(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        match rows.iter_mut().find(|(used, _)| used + lengths[i] <= len) {
            Some((used, row)) => {
                *used += lengths[i];
                row.push(i);
            }
            None => rows.push((lengths[i], vec![i])),
        }
    }
    rows.into_iter().map(|(_, row)| row).collect()
}

/// The batch packed (see [`Batch`]).
fn collate(examples: &[&Tokenized], device: &Device) -> Result<Batch> {
    let sizes: Vec<usize> = examples.iter().map(|e| e.input.len().max(1)).collect();
    let len = sizes.iter().copied().max().unwrap_or(1);
    let rows = pack(&sizes);
    let cells = rows.len() * len;
    let mut input = vec![0u32; cells];
    let mut targets = vec![0u32; cells];
    let mut owner = vec![0f32; cells * examples.len()];
    let mut counted = 0;
    for (r, row) in rows.iter().enumerate() {
        let mut at = r * len;
        for &i in row {
            let e = examples[i];
            for p in 0..sizes[i] {
                input[at + p] = e.input.get(p).copied().unwrap_or(0);
                if let Some(target) = e.targets.get(p).copied().flatten() {
                    targets[at + p] = target;
                    owner[(at + p) * examples.len() + i] = 1.0;
                    counted += 1;
                }
            }
            at += sizes[i];
        }
    }
    let shape = (rows.len(), len);
    Ok(Batch {
        input: Tensor::from_vec(input, shape, device)?,
        targets: Tensor::from_vec(targets, shape, device)?,
        lengths: rows
            .iter()
            .map(|row| row.iter().map(|&i| sizes[i]).collect())
            .collect(),
        owner: Tensor::from_vec(owner, (cells, examples.len()), device)?,
        counted,
    })
}

/// Per example, the summed log-probability of its target tokens `(batch,)`, and how many
/// target tokens there were in all.
pub fn answer_logprobs(model: &LoadedModel, examples: &[&Tokenized]) -> Result<(Tensor, usize)> {
    let device = model.decoder.device();
    let batch = collate(examples, device)?;
    let picked =
        model
            .decoder
            .target_logprobs_packed(&batch.input, &batch.targets, &batch.lengths)?;
    let sums = picked
        .flatten_all()?
        .unsqueeze(0)?
        .matmul(&batch.owner)?
        .squeeze(0)?;
    Ok((sums, batch.counted))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_share_rows_as_long_as_the_longest_longest_first() {
        // 10 | 6 + 4 | 5 + 3 + 2 — every example once, no row over 10.
        let rows = pack(&[3, 10, 4, 6, 5, 2]);
        assert_eq!(rows, vec![vec![1], vec![3, 2], vec![4, 0, 5]]);
        assert_eq!(pack(&[7]), vec![vec![0]]);
        assert!(pack(&[]).is_empty());
    }
}
