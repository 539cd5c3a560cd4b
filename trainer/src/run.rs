//! The training loop every stage shares: length-bucketed batches in a seeded order per epoch,
//! AdamW with warmup + cosine decay, gradient accumulation and clipping, eval and early
//! stopping, a metrics JSON-lines file, and checkpoints (adapter, optimizer state, position)
//! that a killed run resumes from with the same data order. A stage supplies its loss through
//! [`Objective`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use kefu_model::LoadedModel;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::lora::{Adapters, LoraConfig};
use crate::optim::{AdamW, AdamWConfig, clip, learning_rate};

/// Hyper-parameters of one training run (SFT or DPO).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub lora: LoraConfig,
    pub epochs: usize,
    /// Stop after this many optimizer steps (0: no limit).
    pub max_steps: usize,
    pub learning_rate: f64,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    pub grad_accum: usize,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Evaluate (and checkpoint) every this many steps (0: at the end of each epoch only).
    pub eval_every: usize,
    /// Stop when the eval loss has not improved this many evaluations in a row (0: never).
    pub patience: usize,
    /// DPO: how far the policy may move from the reference (the β of the loss).
    pub beta: f64,
    /// Keep only each layer's input in the forward pass and recompute the layer in the
    /// backward pass: far less memory on long examples for about a third more compute.
    pub checkpoint_layers: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lora: LoraConfig::default(),
            epochs: 1,
            max_steps: 0,
            learning_rate: 2e-4,
            batch_size: 4,
            grad_accum: 1,
            warmup_ratio: 0.05,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            seed: 42,
            eval_every: 0,
            patience: 0,
            beta: 0.1,
            checkpoint_layers: false,
        }
    }
}

/// Where a run stands: written with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub step: usize,
    pub epoch: usize,
    /// Batches of this epoch already used.
    pub batch_in_epoch: usize,
    pub best_eval_loss: Option<f64>,
    pub evals_without_improvement: usize,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub steps: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    pub eval_loss: Option<f64>,
    /// The objective's other figures at the last evaluation (DPO: reward accuracy, margins…).
    pub eval_metrics: Vec<(String, f64)>,
    /// The eval loss and figures of the starting model, before the first step (`None` when
    /// resumed or without eval data).
    pub base_eval: Option<(f64, Vec<(String, f64)>)>,
    pub stopped_early: bool,
    pub adapter_dir: PathBuf,
}

/// The batches of one epoch: examples sorted by length and cut into batches (so a batch pads
/// little), in an order shuffled by `seed` and `epoch`.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut batches: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    batches.shuffle(&mut rng);
    batches
}

/// How many optimizer steps a run of `items` items takes (epochs, accumulation, `max_steps`).
pub fn total_steps(items: usize, config: &TrainConfig) -> usize {
    let batches_per_epoch = items.div_ceil(config.batch_size.max(1));
    let steps_per_epoch = batches_per_epoch.div_ceil(config.grad_accum.max(1));
    let total = steps_per_epoch * config.epochs;
    if config.max_steps > 0 {
        total.min(config.max_steps)
    } else {
        total
    }
}

/// Which items a run will use (before any early stop): with `max_steps` short of an epoch,
/// only some. DPO computes reference log-probabilities for these alone.
pub fn used_items(lengths: &[usize], config: &TrainConfig) -> Vec<bool> {
    let mut used = vec![false; lengths.len()];
    let mut steps_left = total_steps(lengths.len(), config);
    for epoch in 0..config.epochs {
        let batches = epoch_batches(lengths, config.batch_size, config.seed, epoch);
        for group in batches.chunks(config.grad_accum.max(1)) {
            if steps_left == 0 {
                return used;
            }
            steps_left -= 1;
            for &i in group.iter().flatten() {
                used[i] = true;
            }
        }
    }
    used
}

const CHECKPOINT: &str = "checkpoint";

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serializable");
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).map_err(|e| TrainError::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| TrainError::io(path, e))
}

/// Saves adapter, optimizer and progress into `output/checkpoint`, replacing the previous one
/// only once the new one is complete.
fn checkpoint(
    output: &Path,
    adapters: &Adapters,
    optimizer: &AdamW,
    progress: &Progress,
    base: &str,
) -> Result<()> {
    let fresh = output.join(format!("{CHECKPOINT}.partial"));
    let _ = std::fs::remove_dir_all(&fresh);
    adapters.save(&fresh, base)?;
    optimizer.save(&fresh.join("optimizer.safetensors"))?;
    write_json(&fresh.join("progress.json"), progress)?;
    let done = output.join(CHECKPOINT);
    let old = output.join(format!("{CHECKPOINT}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if done.exists() {
        std::fs::rename(&done, &old).map_err(|e| TrainError::io(&done, e))?;
    }
    std::fs::rename(&fresh, &done).map_err(|e| TrainError::io(&done, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Named figures of a batch or an evaluation (reward accuracy, margins…).
pub type Figures = Vec<(&'static str, f64)>;
/// A batch's summed loss, its figures summed over it, and the tokens it ran.
pub type BatchLoss = (Tensor, Figures, usize);
/// The eval loss and figures, `None` without eval data.
pub type Evaluation = Option<(f64, Figures)>;

/// The mean loss and figures per item of a preference objective's eval set, run `batch` items
/// at a time beside their reference values: `figures(items, references)` gives a chunk's
/// summed loss and summed figures. `None` without eval items.
pub fn evaluate_in_chunks<T, R>(
    items: &[T],
    references: &[R],
    batch: usize,
    mut figures: impl FnMut(&[&T], &[R]) -> Result<(Tensor, Figures)>,
) -> Result<Evaluation> {
    if items.is_empty() {
        return Ok(None);
    }
    let mut loss = 0f64;
    let mut totals: Figures = Vec::new();
    let size = batch.max(1);
    for (chunk, refs) in items.chunks(size).zip(references.chunks(size)) {
        let chunk: Vec<&T> = chunk.iter().collect();
        let (sum, named) = figures(&chunk, refs)?;
        loss += sum.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        for (name, value) in named {
            match totals.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += value,
                None => totals.push((name, value)),
            }
        }
    }
    let n = items.len() as f64;
    Ok(Some((
        loss / n,
        totals.into_iter().map(|(name, v)| (name, v / n)).collect(),
    )))
}

/// What a training stage optimizes: SFT's answer loss, DPO's preference loss.
pub trait Objective {
    /// Training items (examples or pairs).
    fn items(&self) -> usize;
    /// Each item's length in tokens, for length-bucketed batches.
    fn lengths(&self) -> Vec<usize>;
    /// How much a batch weighs in the mean a step optimizes (SFT: answer tokens; DPO: pairs).
    fn weight(&self, batch: &[usize]) -> f64;
    /// The batch's summed loss (with gradients), named figures summed over it, and the tokens
    /// it ran through the model.
    fn batch_loss(&self, model: &LoadedModel, batch: &[usize]) -> Result<BatchLoss>;
    /// The eval loss and figures, or `None` without eval data.
    fn evaluate(&self, model: &LoadedModel) -> Result<Evaluation>;
}

/// Trains a fresh LoRA adapter for `objective` (resuming from `output/checkpoint` when
/// `resume` and one exists); the final adapter goes to `output/adapter`, metrics to
/// `output/metrics.jsonl`. `on_step(step, total, loss)` reports progress; returning `false`
/// stops the run there as if it were killed (the last checkpoint stays).
#[allow(clippy::too_many_arguments)]
/// Figures by name, owned (a report's).
type NamedFigures = Vec<(String, f64)>;

/// Refuses an objective without items and settings that cannot train.
fn check_settings(objective: &dyn Objective, config: &TrainConfig) -> Result<()> {
    if objective.items() == 0 {
        return Err(TrainError::Data("no training examples".into()));
    }
    if config.batch_size == 0
        || config.grad_accum == 0
        || config.epochs == 0
        || config.learning_rate <= 0.0
    {
        return Err(TrainError::Config(
            "batch size, gradient accumulation and epochs must be at least 1 and the learning rate positive".into(),
        ));
    }
    Ok(())
}

/// Evaluates (when there is eval data), adds the figures to the step's metrics `record` and
/// keeps count of evaluations without improvement; the loss and figures.
fn evaluate_now(
    model: &LoadedModel,
    objective: &dyn Objective,
    progress: &mut Progress,
    record: &mut serde_json::Value,
) -> Result<Option<(f64, NamedFigures)>> {
    let Some((loss, figures)) = objective.evaluate(model)? else {
        return Ok(None);
    };
    record["eval_loss"] = serde_json::json!(loss);
    for (name, value) in &figures {
        record[format!("eval_{name}")] = serde_json::json!(value);
    }
    if progress.best_eval_loss.is_none_or(|best| loss < best) {
        progress.best_eval_loss = Some(loss);
        progress.evals_without_improvement = 0;
    } else {
        progress.evals_without_improvement += 1;
    }
    Ok(Some((loss, owned(figures))))
}

/// `path` opened for appending (created when missing).
fn append_to(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))
}

/// Figures named by static strings, owned.
fn owned(figures: Vec<(&'static str, f64)>) -> Vec<(String, f64)> {
    figures
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
}

/// The adapters (fresh, or a checkpoint's), their optimizer and the position in the data.
fn start(
    model: &mut LoadedModel,
    config: &TrainConfig,
    output: &Path,
    resume: bool,
) -> Result<(Adapters, AdamW, Progress)> {
    let saved = output.join(CHECKPOINT);
    let resuming = resume && saved.join("progress.json").exists();
    let adapters = if resuming {
        Adapters::load(&mut model.decoder, &saved)?
    } else {
        Adapters::attach(&mut model.decoder, &config.lora, config.seed)?
    };
    let mut optimizer = AdamW::new(
        &adapters.vars(),
        AdamWConfig {
            weight_decay: config.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let mut progress = Progress {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        best_eval_loss: None,
        evals_without_improvement: 0,
    };
    if resuming {
        optimizer.load(&saved.join("optimizer.safetensors"))?;
        let path = saved.join("progress.json");
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        progress = serde_json::from_str(&text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    }
    Ok((adapters, optimizer, progress))
}

/// One optimizer step's gradients, summed over its accumulated batches.
struct Accumulated {
    grads: Vec<Tensor>,
    /// The step's loss: the mean over the whole group.
    loss_sum: f64,
    seen_tokens: usize,
    figures: Vec<(&'static str, f64)>,
}

/// Runs forward and backward over `group`, each batch's loss divided by the group's `weight`.
fn accumulate(
    model: &mut LoadedModel,
    objective: &dyn Objective,
    group: &[Vec<usize>],
    vars: &[candle_core::Var],
    weight: f64,
    checkpoint_layers: bool,
) -> Result<Accumulated> {
    // Checkpointing applies to these passes only: evaluation passes keep nothing.
    model.decoder.set_checkpointing(checkpoint_layers);
    let result = accumulate_group(model, objective, group, vars, weight);
    model.decoder.set_checkpointing(false);
    result
}

fn accumulate_group(
    model: &LoadedModel,
    objective: &dyn Objective,
    group: &[Vec<usize>],
    vars: &[candle_core::Var],
    weight: f64,
) -> Result<Accumulated> {
    let mut grads: Vec<Tensor> = vars
        .iter()
        .map(|v| v.as_tensor().zeros_like())
        .collect::<candle_core::Result<_>>()?;
    let mut loss_sum = 0f64;
    let mut seen_tokens = 0usize;
    let mut figures: Vec<(&'static str, f64)> = Vec::new();
    for batch in group {
        let (sum, batch_figures, batch_tokens) = objective.batch_loss(model, batch)?;
        seen_tokens += batch_tokens;
        let loss = (sum / weight)?;
        loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        for (name, value) in batch_figures {
            match figures.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += value / weight,
                None => figures.push((name, value / weight)),
            }
        }
        let mut store = loss.backward()?;
        model.decoder.backward_checkpoints(&mut store)?;
        for (g, var) in grads.iter_mut().zip(vars) {
            if let Some(grad) = store.get(var.as_tensor()) {
                *g = (&*g + grad)?;
            }
        }
    }
    Ok(Accumulated {
        grads,
        loss_sum,
        seen_tokens,
        figures,
    })
}

pub fn train_loop(
    model: &mut LoadedModel,
    base_name: &str,
    objective: &dyn Objective,
    config: &TrainConfig,
    output: &Path,
    resume: bool,
    mut on_step: impl FnMut(usize, usize, f64) -> bool,
) -> Result<Report> {
    check_settings(objective, config)?;
    std::fs::create_dir_all(output).map_err(|e| TrainError::io(output, e))?;
    let (adapters, mut optimizer, mut progress) = start(model, config, output, resume)?;
    let vars = adapters.vars();
    let lengths = objective.lengths();
    let total_steps = total_steps(lengths.len(), config);
    let warmup = ((total_steps as f64) * config.warmup_ratio).round() as usize;
    let metrics_path = output.join("metrics.jsonl");
    let mut metrics = append_to(&metrics_path)?;
    let mut first_loss = None;
    let mut last_loss = f64::NAN;
    let mut stopped_early = false;
    let mut eval_loss = None;
    let mut eval_metrics = Vec::new();
    let mut base_eval = None;
    if progress.step == 0
        && let Some((loss, figures)) = objective.evaluate(model)?
    {
        let mut record = serde_json::json!({ "step": 0, "eval_loss": loss });
        for (name, value) in &figures {
            record[format!("eval_{name}")] = serde_json::json!(value);
        }
        writeln!(metrics, "{record}").map_err(|e| TrainError::io(&metrics_path, e))?;
        base_eval = Some((loss, owned(figures)));
    }

    'epochs: while progress.epoch < config.epochs && progress.step < total_steps {
        let batches = epoch_batches(&lengths, config.batch_size, config.seed, progress.epoch);
        while progress.batch_in_epoch < batches.len() && progress.step < total_steps {
            let started = Instant::now();
            adapters.reseed(
                config
                    .seed
                    .wrapping_add((progress.step as u64).wrapping_mul(0x9e37_79b9)),
            );
            let group_end = (progress.batch_in_epoch + config.grad_accum).min(batches.len());
            let group = &batches[progress.batch_in_epoch..group_end];
            let weight: f64 = group
                .iter()
                .map(|b| objective.weight(b))
                .sum::<f64>()
                .max(1e-9);
            let Accumulated {
                mut grads,
                loss_sum,
                seen_tokens,
                figures,
            } = accumulate(
                model,
                objective,
                group,
                &vars,
                weight,
                config.checkpoint_layers,
            )?;
            clip(&mut grads, config.max_grad_norm)?;
            let lr = learning_rate(progress.step, warmup, total_steps, config.learning_rate);
            // The decoder's adapters share these variables' storage: the update is in place.
            optimizer.update(&vars, &grads, lr)?;
            progress.step += 1;
            progress.batch_in_epoch = group_end;
            first_loss.get_or_insert(loss_sum);
            last_loss = loss_sum;
            let seconds = started.elapsed().as_secs_f64();
            let mut record = serde_json::json!({
                "step": progress.step, "epoch": progress.epoch, "loss": loss_sum,
                "learning_rate": lr, "tokens_per_second": seen_tokens as f64 / seconds.max(1e-9),
            });
            for (name, value) in &figures {
                record[*name] = serde_json::json!(value);
            }
            let at_end_of_epoch = progress.batch_in_epoch >= batches.len();
            let evaluate = (config.eval_every > 0
                && progress.step.is_multiple_of(config.eval_every))
                || at_end_of_epoch
                || progress.step == total_steps;
            if evaluate {
                if let Some((loss, figures)) =
                    evaluate_now(model, objective, &mut progress, &mut record)?
                {
                    eval_loss = Some(loss);
                    eval_metrics = figures;
                }
                if at_end_of_epoch {
                    progress.epoch += 1;
                    progress.batch_in_epoch = 0;
                }
                checkpoint(output, &adapters, &optimizer, &progress, base_name)?;
            }
            writeln!(metrics, "{record}").map_err(|e| TrainError::io(&metrics_path, e))?;
            if !on_step(progress.step, total_steps, loss_sum) {
                return Err(TrainError::Interrupted(progress.step));
            }
            if config.patience > 0 && progress.evals_without_improvement >= config.patience {
                stopped_early = true;
                break 'epochs;
            }
            if at_end_of_epoch {
                continue 'epochs;
            }
        }
        progress.epoch += 1;
        progress.batch_in_epoch = 0;
    }
    let adapter_dir = output.join("adapter");
    adapters.save(&adapter_dir, base_name)?;
    Ok(Report {
        steps: progress.step,
        first_loss: first_loss.unwrap_or(f64::NAN),
        last_loss,
        eval_loss,
        eval_metrics,
        base_eval,
        stopped_early,
        adapter_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_items_are_those_the_steps_reach() {
        let lengths = [5, 9, 3, 7, 1, 8, 2];
        let config = |max_steps, grad_accum, epochs| TrainConfig {
            batch_size: 2,
            grad_accum,
            max_steps,
            epochs,
            ..TrainConfig::default()
        };
        assert_eq!(total_steps(7, &config(0, 1, 1)), 4);
        assert_eq!(total_steps(7, &config(0, 2, 3)), 6);
        assert_eq!(total_steps(7, &config(3, 1, 5)), 3);
        assert!(used_items(&lengths, &config(0, 1, 1)).iter().all(|&u| u));
        let one_step = used_items(&lengths, &config(1, 1, 1));
        let first = &epoch_batches(&lengths, 2, 42, 0)[0];
        let expected: Vec<bool> = (0..7).map(|i| first.contains(&i)).collect();
        assert_eq!(one_step, expected);
        let accumulated = used_items(&lengths, &config(1, 2, 1));
        assert_eq!(accumulated.iter().filter(|&&u| u).count(), 4);
    }
}
