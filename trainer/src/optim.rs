//! AdamW (decoupled weight decay) with its state kept in the open so checkpoints can save and
//! restore it exactly; the learning-rate schedule (linear warmup, cosine decay) and clipping by
//! the global gradient norm.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over a fixed list of variables.
#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates taken so far.
    pub step: usize,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: &[Var], config: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            config,
            step: 0,
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// One update of every variable with its gradient (`grads[i]` for `vars[i]`).
    pub fn update(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        let c = self.config;
        self.step += 1;
        let t = self.step as i32;
        let correction1 = 1.0 - c.beta1.powi(t);
        let correction2 = 1.0 - c.beta2.powi(t);
        for (i, (var, grad)) in vars.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * c.beta1)? + (grad * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&m / correction1)?;
            let v_hat = (&v / correction2)?;
            let step = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (step * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Writes the moments and the step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            tensors.insert(format!("m.{i}"), m.clone());
            tensors.insert(format!("v.{i}"), v.clone());
        }
        tensors.insert(
            "step".into(),
            Tensor::new(&[self.step as u32], self.m[0].device())?,
        );
        candle_core::safetensors::save(&tensors, path)?;
        Ok(())
    }

    /// Restores what [`Self::save`] wrote; the variables must be the same list.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let device = self.m[0].device().clone();
        let mut tensors = candle_core::safetensors::load(path, &device)?;
        let mut take = |name: String| {
            tensors.remove(&name).ok_or_else(|| {
                TrainError::Config(format!(
                    "{}: no `{name}` (another run's checkpoint?)",
                    path.display()
                ))
            })
        };
        for i in 0..self.m.len() {
            let (m, v) = (take(format!("m.{i}"))?, take(format!("v.{i}"))?);
            if m.dims() != self.m[i].dims() {
                return Err(TrainError::Config(format!(
                    "{}: optimizer state does not fit these adapters",
                    path.display()
                )));
            }
            self.m[i] = m;
            self.v[i] = v;
        }
        self.step = take("step".into())?.to_vec1::<u32>()?[0] as usize;
        Ok(())
    }
}

/// Linear warmup to `peak` over `warmup` steps, then cosine decay to 0 at `total`.
pub fn learning_rate(step: usize, warmup: usize, total: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter() {
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_adamw_step_matches_the_formula() {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let config = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(std::slice::from_ref(&var), config).unwrap();
        let grad = Tensor::new(&[0.5f32, -4.0], &Device::Cpu).unwrap();
        opt.update(std::slice::from_ref(&var), &[grad], 0.01)
            .unwrap();
        // First step: m̂ = g, v̂ = g², so the step is g/(|g|+eps) ≈ sign(g).
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        let expect = |w: f32, g: f32| w * (1.0 - 0.01 * 0.1) - 0.01 * g / (g.abs() + 1e-8);
        assert!((got[0] - expect(1.0, 0.5)).abs() < 1e-6, "{got:?}");
        assert!((got[1] - expect(-2.0, -4.0)).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(0, 10, 100, 1.0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(9, 10, 100, 1.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(10, 10, 100, 1.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(55, 10, 100, 1.0) - 0.5).abs() < 1e-12);
        assert!(learning_rate(100, 10, 100, 1.0).abs() < 1e-12);
    }

    #[test]
    fn clipping_caps_the_global_norm() {
        let mut grads = vec![
            Tensor::new(&[3.0f32], &Device::Cpu).unwrap(),
            Tensor::new(&[4.0f32], &Device::Cpu).unwrap(),
        ];
        let norm = clip(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let a = grads[0].to_vec1::<f32>().unwrap()[0];
        let b = grads[1].to_vec1::<f32>().unwrap()[0];
        assert!(((a * a + b * b).sqrt() - 1.0).abs() < 1e-4);
    }
}
