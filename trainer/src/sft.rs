//! Supervised fine-tuning with LoRA: length-bucketed batches in a seeded order, the loss on
//! answer tokens only, AdamW with warmup + cosine decay, gradient accumulation and clipping,
//! eval loss and early stopping, a metrics JSON-lines file, and checkpoints (adapter, optimizer
//! state, position) that a killed run resumes from with the same data order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use kefu_model::LoadedModel;
use serde::{Deserialize, Serialize};

use crate::data::Tokenized;
use crate::error::{Result, TrainError};
use crate::lora::{Adapters, LoraConfig};
use crate::optim::{AdamW, AdamWConfig, clip, learning_rate};

/// Hyper-parameters of one SFT run.
#[derive(Debug, Clone, PartialEq)]
pub struct SftConfig {
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
}

impl Default for SftConfig {
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

/// Sum of the negative log-likelihoods of the target tokens, and how many there were.
pub fn answer_nll(model: &LoadedModel, examples: &[&Tokenized]) -> Result<(Tensor, usize)> {
    let device = model.decoder.device();
    let (input, targets, mask, counted) = collate(examples, device)?;
    let logits = model.decoder.forward_train(&input)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = log_probs.gather(&targets.unsqueeze(2)?, 2)?.squeeze(2)?;
    let nll = (picked * mask)?.sum_all()?.neg()?;
    Ok((nll, counted))
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

/// Trains a fresh LoRA adapter on `train` (resuming from `output/checkpoint` when `resume` and
/// one exists), evaluating on `eval`; the final adapter goes to `output/adapter`, metrics to
/// `output/metrics.jsonl`. `on_step(step, total, loss)` reports progress; returning `false`
/// stops the run there as if it were killed (the last checkpoint stays).
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut LoadedModel,
    base_name: &str,
    train: &[Tokenized],
    eval: &[Tokenized],
    config: &SftConfig,
    output: &Path,
    resume: bool,
    mut on_step: impl FnMut(usize, usize, f64) -> bool,
) -> Result<Report> {
    if train.is_empty() {
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
    std::fs::create_dir_all(output).map_err(|e| TrainError::io(output, e))?;
    let saved = output.join(CHECKPOINT);
    let resuming = resume && saved.join("progress.json").exists();
    let adapters = if resuming {
        Adapters::load(&mut model.decoder, &saved)?
    } else {
        Adapters::attach(&mut model.decoder, &config.lora, config.seed)?
    };
    let vars = adapters.vars();
    let mut optimizer = AdamW::new(
        &vars,
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
    let lengths: Vec<usize> = train.iter().map(|e| e.input.len()).collect();
    let batches_per_epoch = lengths.len().div_ceil(config.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(config.grad_accum);
    let mut total_steps = steps_per_epoch * config.epochs;
    if config.max_steps > 0 {
        total_steps = total_steps.min(config.max_steps);
    }
    let warmup = ((total_steps as f64) * config.warmup_ratio).round() as usize;
    let metrics_path = output.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| TrainError::io(&metrics_path, e))?;
    let mut first_loss = None;
    let mut last_loss = f64::NAN;
    let mut stopped_early = false;
    let mut eval_loss = None;

    'epochs: while progress.epoch < config.epochs && progress.step < total_steps {
        let batches = epoch_batches(&lengths, config.batch_size, config.seed, progress.epoch);
        while progress.batch_in_epoch < batches.len() && progress.step < total_steps {
            let started = Instant::now();
            let group_end = (progress.batch_in_epoch + config.grad_accum).min(batches.len());
            let group = &batches[progress.batch_in_epoch..group_end];
            let tokens: usize = group
                .iter()
                .flatten()
                .map(|&i| train[i].answer_tokens())
                .sum::<usize>()
                .max(1);
            let mut grads: Vec<Tensor> = vars
                .iter()
                .map(|v| v.as_tensor().zeros_like())
                .collect::<candle_core::Result<_>>()?;
            let mut loss_sum = 0f64;
            let mut seen_tokens = 0usize;
            for batch in group {
                let refs: Vec<&Tokenized> = batch.iter().map(|&i| &train[i]).collect();
                seen_tokens += refs.iter().map(|e| e.input.len()).sum::<usize>();
                let (nll, _) = answer_nll(model, &refs)?;
                // Mean over every answer token of the accumulated group.
                let loss = (nll / tokens as f64)?;
                loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let store = loss.backward()?;
                for (g, var) in grads.iter_mut().zip(&vars) {
                    if let Some(grad) = store.get(var.as_tensor()) {
                        *g = (&*g + grad)?;
                    }
                }
            }
            clip(&mut grads, config.max_grad_norm)?;
            let lr = learning_rate(progress.step, warmup, total_steps, config.learning_rate);
            optimizer.update(&vars, &grads, lr)?;
            adapters.install(&mut model.decoder)?;
            progress.step += 1;
            progress.batch_in_epoch = group_end;
            first_loss.get_or_insert(loss_sum);
            last_loss = loss_sum;
            let seconds = started.elapsed().as_secs_f64();
            let mut record = serde_json::json!({
                "step": progress.step, "epoch": progress.epoch, "loss": loss_sum,
                "learning_rate": lr, "tokens_per_second": seen_tokens as f64 / seconds.max(1e-9),
            });
            let at_end_of_epoch = progress.batch_in_epoch >= batches.len();
            let evaluate = (config.eval_every > 0 && progress.step.is_multiple_of(config.eval_every))
                || at_end_of_epoch
                || progress.step == total_steps;
            if evaluate {
                if !eval.is_empty() {
                    let loss = mean_loss(model, eval, config.batch_size)?;
                    record["eval_loss"] = serde_json::json!(loss);
                    eval_loss = Some(loss);
                    if progress.best_eval_loss.is_none_or(|best| loss < best) {
                        progress.best_eval_loss = Some(loss);
                        progress.evals_without_improvement = 0;
                    } else {
                        progress.evals_without_improvement += 1;
                    }
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
        stopped_early,
        adapter_dir,
    })
}
