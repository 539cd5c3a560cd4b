//! The training pipeline behind `kefu train` and the worker, without its command line: each
//! stage's settings resolved (flag over recipe over default) and refused before anything
//! loads, the data read (CPT: documents through the `rag` crate's parsers), the base loaded as
//! asked (Q8_0, 4-bit, dense f32, or bf16 on a GPU), the stage trained with a progress bar,
//! and a recipe's stages chained through merged GGUF files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use kefu_model::gguf::{GgmlDType, GgufFile};
use kefu_model::{DecoderOptions, LoadOptions, LoadedModel};

use crate::data::OnBadLine;
use crate::lora::LoraConfig;
use crate::recipe::{LoraSection, Recipe, Stage, StageKind};
use crate::run::{Report, TrainConfig};

mod items;

use items::{read_items, train_items};

/// Where model names lead: the caller's catalog (the server fetches known models on first use).
pub trait ModelSource {
    /// The chat model trained when neither a flag nor the recipe names one.
    fn default_model(&self) -> &str;
    /// The file or folder of a model named by a catalog name or a path.
    fn resolve(&self, model: &str) -> Result<PathBuf>;
}

/// How the frozen base is held while adapters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseWeights {
    /// Q8_0 blocks (what the server runs; the default where Kefu's Q8_0 kernels run).
    Q8_0,
    /// 4-bit blocks (QLoRA): the model file's own 4-bit weights, or a Q4_0 copy of them.
    Q4,
    /// Dense f32 (about 4× the memory of Q8_0; the default on CPUs without AVX-512 VNNI).
    F32,
}

impl BaseWeights {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Self::Q8_0),
            "q4" => Ok(Self::Q4),
            "f32" => Ok(Self::F32),
            _ => bail!("base weights are q8_0, q4 or f32, not `{name}`"),
        }
    }

    /// The default: Q8_0 where Kefu's Q8_0 matrix kernels run (AVX-512 VNNI), else f32. Without
    /// them a Q8_0 product is candle's row-at-a-time dot products: training the 0.5B model on
    /// a served prompt (AVX2-only 2-core VM) ran at 8 tokens/s against 20 with an f32 base, for
    /// 1.1 GiB more memory (`docs/BENCHMARKS.md`, "On a CPU without AVX-512").
    pub fn fastest() -> Self {
        if kefu_model::q8::available() {
            Self::Q8_0
        } else {
            Self::F32
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BaseWeights::Q8_0 => "q8_0",
            BaseWeights::Q4 => "q4",
            BaseWeights::F32 => "f32",
        }
    }
}

/// One stage's settings as given (`kefu train`'s flags); `None` leaves the recipe's value, or
/// the default.
#[derive(Debug, Clone, Default)]
pub struct StageOptions {
    pub recipe: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub model: Option<String>,
    pub start_adapter: Option<PathBuf>,
    pub output: PathBuf,
    pub base_weights: Option<BaseWeights>,
    pub device: Option<String>,
    pub checkpoint_layers: Option<bool>,
    pub epochs: Option<usize>,
    pub max_steps: Option<usize>,
    pub learning_rate: Option<f64>,
    pub batch: Option<usize>,
    pub accum: Option<usize>,
    pub warmup_ratio: Option<f64>,
    pub rank: Option<usize>,
    pub alpha: Option<f64>,
    pub dropout: Option<f64>,
    pub targets: Option<String>,
    pub max_len: Option<usize>,
    pub eval_fraction: Option<f64>,
    pub eval_limit: Option<usize>,
    pub split: Option<String>,
    pub eval_split: Option<String>,
    pub eval_every: Option<usize>,
    pub patience: Option<usize>,
    pub seed: Option<u64>,
    pub on_bad_line: Option<OnBadLine>,
    pub beta: Option<f64>,
    pub resume: bool,
}

/// Trains one stage from its options and their optional recipe.
pub fn stage(models: &dyn ModelSource, kind: StageKind, args: &StageOptions) -> Result<Report> {
    let recipe = match &args.recipe {
        Some(path) => Recipe::read(path)?,
        None => Recipe::default(),
    };
    let settings = Settings::resolve(kind, args, &recipe, models.default_model())?;
    train_stage(
        models,
        &settings,
        args.start_adapter.as_deref(),
        &args.output,
        args.resume,
        &mut |_, _, _| true,
    )
}

/// A stage's settings with every default applied.
#[derive(Debug, Clone)]
struct Settings {
    kind: StageKind,
    model: String,
    base_weights: BaseWeights,
    device: String,
    data: PathBuf,
    config: TrainConfig,
    max_len: usize,
    eval_fraction: f64,
    eval_limit: usize,
    split: Option<String>,
    eval_split: Option<String>,
    on_bad_line: OnBadLine,
}

impl Settings {
    /// Flags over the recipe over the defaults; refuses settings that make no sense for the
    /// stage before anything is loaded.
    fn resolve(
        kind: StageKind,
        args: &StageOptions,
        recipe: &Recipe,
        default_model: &str,
    ) -> Result<Self> {
        let empty = Stage::default();
        let section = recipe.stage(kind).unwrap_or(&empty);
        let lora = recipe.lora.clone().unwrap_or_default();
        let name = kind.name();
        if !kind.has_beta() && args.beta.is_some() {
            bail!("--beta is a DPO setting (and KTO's)");
        }
        if kind == StageKind::Cpt && (args.split.is_some() || args.eval_split.is_some()) {
            bail!("CPT reads documents, which have no split field; use --eval-fraction");
        }
        let data = args
            .data
            .clone()
            .or_else(|| section.data.clone())
            .with_context(|| format!("name the data: --data or `data` in the recipe's [{name}]"))?;
        let base_weights = match (args.base_weights, &recipe.base_weights) {
            (Some(weights), _) => weights,
            (None, Some(name)) => BaseWeights::parse(name)?,
            (None, None) => BaseWeights::fastest(),
        };
        let targets = match (&args.targets, &lora.targets) {
            (Some(list), _) => list.clone(),
            (None, Some(list)) => list.join(","),
            (None, None) => "q,k,v,o,gate,up,down".into(),
        };
        let on_bad_line = match (args.on_bad_line, &section.on_bad_line) {
            (Some(rule), _) => rule,
            (None, Some(rule)) if rule == "fail" => OnBadLine::Fail,
            _ => OnBadLine::Skip,
        };
        let eval_fraction = args.eval_fraction.or(section.eval_fraction).unwrap_or(0.05);
        if !(0.0..=0.5).contains(&eval_fraction) {
            bail!("the eval fraction is between 0 and 0.5, not {eval_fraction}");
        }
        let default_len = if kind == StageKind::Cpt { 512 } else { 1024 };
        let config = TrainConfig {
            lora: LoraConfig {
                rank: args.rank.or(lora.rank).unwrap_or(8),
                alpha: args.alpha.or(lora.alpha).unwrap_or(16.0),
                dropout: args.dropout.or(lora.dropout).unwrap_or(0.0),
                targets: LoraConfig::parse_targets(&targets)?,
            },
            epochs: args.epochs.or(section.epochs).unwrap_or(1),
            max_steps: args.max_steps.or(section.max_steps).unwrap_or(0),
            learning_rate: args.learning_rate.or(section.lr).unwrap_or(2e-4),
            batch_size: args.batch.or(section.batch).unwrap_or(4),
            grad_accum: args.accum.or(section.accum).unwrap_or(1),
            warmup_ratio: args.warmup_ratio.or(section.warmup_ratio).unwrap_or(0.05),
            max_grad_norm: section.max_grad_norm.unwrap_or(1.0),
            weight_decay: section.weight_decay.unwrap_or(0.0),
            seed: args.seed.or(recipe.seed).unwrap_or(42),
            eval_every: args.eval_every.or(section.eval_every).unwrap_or(0),
            patience: args.patience.or(section.patience).unwrap_or(0),
            beta: args.beta.or(section.beta).unwrap_or(0.1),
            checkpoint_layers: args
                .checkpoint_layers
                .or(recipe.checkpoint_layers)
                .unwrap_or(false),
        };
        if !(0.0..1.0).contains(&config.lora.dropout) {
            bail!(
                "LoRA dropout is a share in [0, 1), not {}",
                config.lora.dropout
            );
        }
        if !(0.0..=1.0).contains(&config.warmup_ratio) {
            bail!("the warmup ratio is between 0 and 1");
        }
        if config.beta <= 0.0 {
            bail!("beta must be positive");
        }
        Ok(Self {
            kind,
            model: args
                .model
                .clone()
                .or_else(|| recipe.model.clone())
                .unwrap_or_else(|| default_model.to_string()),
            base_weights,
            device: args.device.clone().unwrap_or_else(|| "cpu".into()),
            data,
            config,
            max_len: args.max_len.or(section.max_len).unwrap_or(default_len),
            eval_fraction,
            eval_limit: args.eval_limit.or(section.eval_limit).unwrap_or(0),
            split: args.split.clone().or_else(|| section.split.clone()),
            eval_split: args
                .eval_split
                .clone()
                .or_else(|| section.eval_split.clone()),
            on_bad_line,
        })
    }

    /// The settings as a recipe of this one stage (written beside the output).
    fn recipe(&self) -> Recipe {
        let c = &self.config;
        let stage = Stage {
            data: Some(self.data.clone()),
            epochs: Some(c.epochs),
            max_steps: Some(c.max_steps),
            lr: Some(c.learning_rate),
            batch: Some(c.batch_size),
            accum: Some(c.grad_accum),
            warmup_ratio: Some(c.warmup_ratio),
            max_grad_norm: Some(c.max_grad_norm),
            weight_decay: Some(c.weight_decay),
            max_len: Some(self.max_len),
            eval_fraction: Some(self.eval_fraction),
            eval_every: Some(c.eval_every),
            eval_limit: Some(self.eval_limit),
            patience: Some(c.patience),
            split: self.split.clone(),
            eval_split: self.eval_split.clone(),
            on_bad_line: Some(
                match self.on_bad_line {
                    OnBadLine::Skip => "skip",
                    OnBadLine::Fail => "fail",
                }
                .into(),
            ),
            beta: self.kind.has_beta().then_some(c.beta),
        };
        let mut recipe = Recipe {
            model: Some(self.model.clone()),
            base_weights: Some(self.base_weights.name().into()),
            seed: Some(c.seed),
            checkpoint_layers: Some(c.checkpoint_layers),
            lora: Some(LoraSection {
                rank: Some(c.lora.rank),
                alpha: Some(c.lora.alpha),
                dropout: Some(c.lora.dropout),
                targets: Some(
                    c.lora
                        .targets
                        .iter()
                        .map(|t| t.module_name().trim_end_matches("_proj").to_string())
                        .collect(),
                ),
            }),
            ..Recipe::default()
        };
        match self.kind {
            StageKind::Cpt => recipe.cpt = Some(stage),
            StageKind::Sft => recipe.sft = Some(stage),
            StageKind::Dpo => recipe.dpo = Some(stage),
            StageKind::Kto => recipe.kto = Some(stage),
        }
        recipe
    }
}

fn report_skipped(path: &Path, skipped: &[(usize, String)]) {
    for (line, reason) in skipped.iter().take(20) {
        eprintln!("{} line {line}: {reason} (skipped)", path.display());
    }
    if skipped.len() > 20 {
        eprintln!("… and {} more bad lines", skipped.len() - 20);
    }
}

/// The GGUF file behind a model path (a folder holding one, or the file).
pub fn gguf_of(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "gguf") && !p.to_string_lossy().contains(".kefu-")
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .next()
        .with_context(|| format!("{} holds no GGUF file", path.display()))
}

/// Loads the base as `weights` asks, on `device`; `scratch` holds a 4-bit copy when the file is
/// not 4-bit. On a GPU the base is dense bf16 whatever `weights` says.
fn load_base(
    path: &Path,
    weights: BaseWeights,
    device: &str,
    scratch: &Path,
) -> Result<LoadedModel> {
    let device = kefu_model::parse_device(device)?;
    if !device.is_cpu() {
        return LoadedModel::load(path, &LoadOptions::default().on(&device))
            .with_context(|| format!("cannot load the model at {}", path.display()));
    }
    let mut path = path.to_path_buf();
    let options = match weights {
        BaseWeights::Q8_0 => LoadOptions::default(),
        BaseWeights::F32 => LoadOptions {
            requantize: false,
            decoder: DecoderOptions {
                dense: true,
                ..DecoderOptions::default()
            },
            ..LoadOptions::default()
        },
        BaseWeights::Q4 => {
            let gguf = gguf_of(&path).context("--base-weights q4 needs a GGUF model")?;
            let mut file = GgufFile::open(&gguf)?;
            if !file.weight_dtype().is_some_and(kefu_model::gguf::is_4bit) {
                let copy = scratch.join("base-q4_0.gguf");
                eprintln!(
                    "writing a 4-bit (Q4_0) copy of the base to {}",
                    copy.display()
                );
                kefu_model::gguf::quantize_projections(&mut file, &copy, GgmlDType::Q4_0)?;
                path = copy;
            } else {
                path = gguf;
            }
            LoadOptions {
                requantize: false,
                ..LoadOptions::default()
            }
        }
    };
    LoadedModel::load(&path, &options)
        .with_context(|| format!("cannot load the model at {}", path.display()))
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "training [{bar:30}] {pos}/{len} steps, loss {msg}, eta {eta}",
        )
        .expect("progress template is valid")
        .progress_chars("=> "),
    );
    bar
}

/// What a stage reports after each step: `(step, total steps, loss)`; `false` stops the run
/// (its last checkpoint stays).
pub type Watch<'a> = dyn FnMut(usize, usize, f64) -> bool + 'a;

fn on_step<'a>(
    bar: &'a ProgressBar,
    watch: &'a mut Watch<'_>,
) -> impl FnMut(usize, usize, f64) -> bool + 'a {
    move |step, total, loss| {
        bar.set_length(total as u64);
        bar.set_position(step as u64);
        bar.set_message(format!("{loss:.4}"));
        watch(step, total, loss)
    }
}

fn print_report(report: &Report) {
    let figures: String = report
        .eval_metrics
        .iter()
        .map(|(name, value)| format!(", eval {name} {value:.4}"))
        .collect();
    println!(
        "{} steps: loss {:.4} → {:.4}{}{}{}; adapter written to {}",
        report.steps,
        report.first_loss,
        report.last_loss,
        report
            .eval_loss
            .map(|l| format!(", eval loss {l:.4}"))
            .unwrap_or_default(),
        figures,
        if report.stopped_early {
            " (stopped early)"
        } else {
            ""
        },
        report.adapter_dir.display()
    );
    if let Some((loss, figures)) = &report.base_eval {
        let figures: String = figures
            .iter()
            .map(|(name, value)| format!(", {name} {value:.4}"))
            .collect();
        println!("before training: eval loss {loss:.4}{figures}");
    }
}

fn train_stage(
    models: &dyn ModelSource,
    settings: &Settings,
    start_adapter: Option<&Path>,
    output: &Path,
    resume: bool,
    watch: &mut Watch<'_>,
) -> Result<Report> {
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    // Read (and refuse) the data before spending time on the model.
    let items = read_items(settings)?;
    settings.recipe().write(&output.join("recipe.toml"))?;

    let mut base = models.resolve(&settings.model)?;
    if let Some(adapter) = start_adapter {
        let merged = output.join("start.gguf");
        eprintln!(
            "merging the starting adapter {} into {}",
            adapter.display(),
            merged.display()
        );
        crate::merge::merge_gguf(&gguf_of(&base)?, adapter, &merged)?;
        base = merged;
    }
    let mut model = load_base(&base, settings.base_weights, &settings.device, output)?;
    let bar = progress_bar();
    let report = train_items(&mut model, settings, items, output, resume, &bar, watch)?;
    bar.finish_and_clear();
    print_report(&report);
    Ok(report)
}

/// One stage of a recipe run: what it started from, its report, and the merged model it wrote.
#[derive(Debug, Clone)]
pub struct StageRun {
    pub kind: StageKind,
    /// The GGUF model the stage trained on.
    pub base: PathBuf,
    pub report: Report,
    /// Base + adapter, the next stage's starting point.
    pub merged: PathBuf,
}

/// Runs every stage of `recipe` from `model`, each in `output/<stage>/` and each starting from
/// the model the previous one merged, on `device` (`None`: the CPU). `watch(stage, step,
/// total, loss)` sees every step and may stop the run.
pub fn run_stages(
    models: &dyn ModelSource,
    recipe: &Recipe,
    model: &str,
    device: Option<&str>,
    output: &Path,
    watch: &mut dyn FnMut(StageKind, usize, usize, f64) -> bool,
) -> Result<Vec<StageRun>> {
    let stages = recipe.stages();
    if stages.is_empty() {
        bail!("the recipe holds no stage: add [cpt], [sft], [dpo] or [kto]");
    }
    // Check every stage's settings before the first one spends any time.
    let mut planned = Vec::new();
    for kind in &stages {
        let flags = StageOptions {
            output: output.join(kind.name()),
            model: Some(model.to_string()),
            device: device.map(str::to_string),
            ..StageOptions::default()
        };
        let settings = Settings::resolve(*kind, &flags, recipe, models.default_model())?;
        planned.push((settings, flags.output));
    }
    let count = planned.len();
    let mut model = model.to_string();
    let mut runs = Vec::new();
    for (i, (mut settings, output)) in planned.into_iter().enumerate() {
        let kind = settings.kind;
        eprintln!("stage {}/{count}: {} from {model}", i + 1, kind.name());
        settings.model = model.clone();
        let report = train_stage(
            models,
            &settings,
            None,
            &output,
            false,
            &mut |step, total, loss| watch(kind, step, total, loss),
        )?;
        let base = gguf_of(&models.resolve(&model)?)?;
        let merged = output.join("model.gguf");
        crate::merge::merge_gguf(&base, &report.adapter_dir, &merged)?;
        println!(
            "{}: merged model written to {}",
            kind.name(),
            merged.display()
        );
        model = merged.to_string_lossy().into_owned();
        runs.push(StageRun {
            kind,
            base,
            report,
            merged,
        });
    }
    Ok(runs)
}

/// `kefu train run`: every stage of the recipe at `path`, from `model` (else the recipe's,
/// else the default); returns the final merged model.
pub fn run_recipe(
    models: &dyn ModelSource,
    path: &Path,
    model: Option<&str>,
    device: Option<&str>,
    output: &Path,
) -> Result<PathBuf> {
    let recipe = Recipe::read(path)?;
    if recipe.stages().is_empty() {
        bail!(
            "{} holds no stage: add [cpt], [sft], [dpo] or [kto]",
            path.display()
        );
    }
    let model = model
        .map(str::to_string)
        .or_else(|| recipe.model.clone())
        .unwrap_or_else(|| models.default_model().to_string());
    let runs = run_stages(
        models,
        &recipe,
        &model,
        device,
        output,
        &mut |_, _, _, _| true,
    )?;
    Ok(runs.last().expect("at least one stage").merged.clone())
}
