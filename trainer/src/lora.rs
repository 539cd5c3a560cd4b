//! LoRA adapters on the decoder's projections, saved in PEFT's layout
//! (`adapter_model.safetensors` with Hugging Face key names + `adapter_config.json`) so PEFT,
//! vLLM and mistral.rs load them, and Kefu loads them back.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use kefu_model::decoder::{Decoder, Target};
use kefu_model::{Lora, LoraDropout};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// Rank, scale, dropout and where adapters go.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Share of each adapter's input zeroed in training (0: none).
    pub dropout: f64,
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Targets from PEFT module names (`q_proj`) or short ones (`q`), comma-separated.
    pub fn parse_targets(list: &str) -> Result<Vec<Target>> {
        let mut targets = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let target = Target::ALL
                .into_iter()
                .find(|t| {
                    t.module_name() == name || t.module_name().trim_end_matches("_proj") == name
                })
                .ok_or_else(|| {
                    TrainError::Config(format!(
                        "`{name}` is not a projection (q, k, v, o, gate, up, down)"
                    ))
                })?;
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        if targets.is_empty() {
            return Err(TrainError::Config(
                "name at least one target projection".into(),
            ));
        }
        Ok(targets)
    }
}

/// One adapter's trainable matrices.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub layer: usize,
    pub target: Target,
    /// `(rank, in_features)`
    pub a: Var,
    /// `(out_features, rank)`
    pub b: Var,
}

/// The adapters attached to a decoder.
#[derive(Debug, Clone)]
pub struct Adapters {
    pub config: LoraConfig,
    pub adapters: Vec<Adapter>,
    /// The mask generator every adapter shares (`None` without dropout).
    dropout: Option<LoraDropout>,
}

fn check_dropout(p: f64) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(TrainError::Config(format!(
            "LoRA dropout is a share in [0, 1), not {p}"
        )))
    }
}

fn dropout_for(config: &LoraConfig) -> Option<LoraDropout> {
    (config.dropout > 0.0).then(|| LoraDropout::new(config.dropout as f32, 0))
}

fn module(layer: usize, target: Target) -> String {
    let block = match target {
        Target::Q | Target::K | Target::V | Target::O => "self_attn",
        Target::Gate | Target::Up | Target::Down => "mlp",
    };
    format!(
        "base_model.model.model.layers.{layer}.{block}.{}",
        target.module_name()
    )
}

impl Adapters {
    /// Attaches fresh adapters: A uniform in ±1/√in (PEFT's Kaiming-uniform bound), B zero, so
    /// the model starts exactly as the base.
    pub fn attach(decoder: &mut Decoder, config: &LoraConfig, seed: u64) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        if config.rank == 0 || config.alpha <= 0.0 {
            return Err(TrainError::Config("rank and alpha must be positive".into()));
        }
        check_dropout(config.dropout)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let device = decoder.device().clone();
        let mut adapters = Vec::new();
        for layer in 0..decoder.config().num_hidden_layers {
            for &target in &config.targets {
                let linear = decoder
                    .linear_mut(layer, target)
                    .ok_or_else(|| TrainError::Config(format!("no {target:?} in layer {layer}")))?;
                let (out_f, in_f) = (linear.out_features(), linear.in_features());
                let bound = 1.0 / (in_f as f32).sqrt();
                let values: Vec<f32> = (0..config.rank * in_f)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(values, (config.rank, in_f), &device)?)?;
                let b = Var::zeros((out_f, config.rank), DType::F32, &device)?;
                adapters.push(Adapter {
                    layer,
                    target,
                    a,
                    b,
                });
            }
        }
        let adapters = Self {
            config: config.clone(),
            adapters,
            dropout: dropout_for(config),
        };
        adapters.install(decoder)?;
        Ok(adapters)
    }

    /// Points the decoder's projections at these adapters' current values.
    pub fn install(&self, decoder: &mut Decoder) -> Result<()> {
        let scale = self.config.scale();
        for adapter in &self.adapters {
            let linear = decoder
                .linear_mut(adapter.layer, adapter.target)
                .ok_or_else(|| TrainError::Config(format!("no layer {}", adapter.layer)))?;
            linear.lora = Some(Lora {
                a: adapter.a.as_tensor().clone(),
                b: adapter.b.as_tensor().clone(),
                scale,
                dropout: self.dropout.clone(),
            });
        }
        Ok(())
    }

    /// Restarts the dropout masks from `seed`: the loop calls this before every step, so a
    /// resumed run draws the masks the uninterrupted one drew.
    pub fn reseed(&self, seed: u64) {
        if let Some(dropout) = &self.dropout {
            dropout.reseed(seed);
        }
    }

    /// Every trainable variable, A then B per adapter.
    pub fn vars(&self) -> Vec<Var> {
        self.adapters
            .iter()
            .flat_map(|a| [a.a.clone(), a.b.clone()])
            .collect()
    }

    /// The tensors under their PEFT key names.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut tensors = HashMap::new();
        for adapter in &self.adapters {
            let name = module(adapter.layer, adapter.target);
            tensors.insert(
                format!("{name}.lora_A.weight"),
                adapter.a.as_tensor().clone(),
            );
            tensors.insert(
                format!("{name}.lora_B.weight"),
                adapter.b.as_tensor().clone(),
            );
        }
        tensors
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir`.
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let weights = dir.join(ADAPTER_WEIGHTS);
        candle_core::safetensors::save(&self.tensors(), &weights)?;
        let config = PeftConfig {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            r: self.config.rank,
            lora_alpha: self.config.alpha,
            lora_dropout: self.config.dropout,
            bias: "none".into(),
            target_modules: self
                .config
                .targets
                .iter()
                .map(|t| t.module_name().to_string())
                .collect(),
            base_model_name_or_path: base_model.to_string(),
            fan_in_fan_out: false,
            inference_mode: true,
        };
        let path = dir.join(ADAPTER_CONFIG);
        let text = serde_json::to_string_pretty(&config).expect("the config serializes");
        std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))?;
        Ok(())
    }

    /// Reads an adapter folder in PEFT's layout and installs it on `decoder`.
    pub fn load(decoder: &mut Decoder, dir: &Path) -> Result<Self> {
        let config = read_config(dir)?;
        let weights = dir.join(ADAPTER_WEIGHTS);
        let device: Device = decoder.device().clone();
        let mut tensors = candle_core::safetensors::load(&weights, &device)?;
        let mut adapters = Vec::new();
        for layer in 0..decoder.config().num_hidden_layers {
            for &target in &config.targets {
                let name = module(layer, target);
                let mut take = |part: &str| {
                    tensors
                        .remove(&format!("{name}.{part}.weight"))
                        .ok_or_else(|| {
                            TrainError::Config(format!("{}: no {name}.{part}", weights.display()))
                        })
                };
                let (a, b) = (take("lora_A")?, take("lora_B")?);
                let linear = decoder
                    .linear_mut(layer, target)
                    .ok_or_else(|| TrainError::Config(format!("no layer {layer}")))?;
                let expected_a = [config.rank, linear.in_features()];
                let expected_b = [linear.out_features(), config.rank];
                if a.dims() != expected_a || b.dims() != expected_b {
                    return Err(TrainError::Config(format!(
                        "{}: {name} has shapes {:?} / {:?}, this model needs {expected_a:?} / \
                         {expected_b:?} (an adapter for another model?)",
                        weights.display(),
                        a.dims(),
                        b.dims()
                    )));
                }
                adapters.push(Adapter {
                    layer,
                    target,
                    a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                    b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
                });
            }
        }
        let dropout = dropout_for(&config);
        let adapters = Self {
            config,
            adapters,
            dropout,
        };
        adapters.install(decoder)?;
        Ok(adapters)
    }
}

/// Rank, alpha and targets from an adapter folder's `adapter_config.json`.
pub fn read_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let peft: PeftConfig = serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    if peft.peft_type != "LORA" {
        return Err(TrainError::Config(format!(
            "{}: only LORA adapters are supported, not {}",
            path.display(),
            peft.peft_type
        )));
    }
    if peft.r == 0 || peft.lora_alpha <= 0.0 {
        return Err(TrainError::Config(format!(
            "{}: rank and alpha must be positive",
            path.display()
        )));
    }
    check_dropout(peft.lora_dropout)?;
    Ok(LoraConfig {
        rank: peft.r,
        alpha: peft.lora_alpha,
        dropout: peft.lora_dropout,
        targets: LoraConfig::parse_targets(&peft.target_modules.join(","))?,
    })
}

/// The fields of PEFT's `adapter_config.json` Kefu writes and reads.
#[derive(Debug, Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    #[serde(default)]
    task_type: String,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default)]
    bias: String,
    target_modules: Vec<String>,
    #[serde(default)]
    base_model_name_or_path: String,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    inference_mode: bool,
}
