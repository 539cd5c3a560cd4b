//! Training recipes: one TOML file naming the base model, the LoRA settings and, per stage
//! (`[cpt]`, `[sft]`, `[dpo]`), the data and hyper-parameters. Unknown keys and settings that
//! belong to another stage are refused when the file is read, before any model is loaded.
//! Every field is optional: a flag given on the command line wins over the recipe, the recipe
//! over the built-in default, and the settings a run used are written beside its output.
//!
//! ```toml
//! model = "smollm2-135m-instruct"
//! base_weights = "q8_0"   # q8_0, q4 (QLoRA on the 4-bit file) or f32; default: q8_0 where
//!                         # the CPU has AVX-512 VNNI, else f32
//! seed = 42
//! checkpoint_layers = true   # recompute layers in the backward pass: less memory
//!
//! [lora]
//! rank = 8
//! alpha = 16.0
//! dropout = 0.05
//! targets = ["q", "k", "v", "o", "gate", "up", "down"]
//!
//! [sft]
//! data = "qa.jsonl"
//! split = "train"
//! eval_split = "test"
//! max_steps = 200
//! lr = 2e-4
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// The stages a recipe may hold, in the order a full run takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Cpt,
    Sft,
    Dpo,
    Kto,
}

impl StageKind {
    pub const ALL: [StageKind; 4] = [
        StageKind::Cpt,
        StageKind::Sft,
        StageKind::Dpo,
        StageKind::Kto,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StageKind::Cpt => "cpt",
            StageKind::Sft => "sft",
            StageKind::Dpo => "dpo",
            StageKind::Kto => "kto",
        }
    }

    /// Stages that learn against the model they start from, with a `beta`.
    pub fn has_beta(self) -> bool {
        matches!(self, StageKind::Dpo | StageKind::Kto)
    }
}

/// A whole recipe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Base chat model: a catalog name, an installed name or a path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// How the frozen base is held: `q8_0`, `q4` or `f32`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_weights: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Recompute each layer in the backward pass instead of keeping its activations: far
    /// less memory on long examples, about a third more compute [default: false].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_layers: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpt: Option<Stage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sft: Option<Stage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dpo: Option<Stage>,
    /// KTO on answers labelled good or bad one by one (`kefu export kto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kto: Option<Stage>,
    /// What a candidate must show before it becomes production (the training worker's gate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSection>,
    /// SFT examples the training worker makes from the knowledge base itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knowledge: Option<KnowledgeSection>,
}

/// `[knowledge]`: the training worker adds SFT examples made from a knowledge base, so a job
/// teaches answering from the documents before (and beside) any feedback. Sections whose
/// heading is a question (an FAQ's shape) become grounded examples: the question with the
/// passages keyword retrieval finds for it, answered with the section's text and a citation;
/// a share of them is repeated with other documents' passages only, answered with the
/// abstention reply. The gate's held-out share applies to them as to feedback.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeSection {
    /// The knowledge base [default: `default`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knowledge_base: Option<String>,
    /// Abstention examples per FAQ example, between 0 and 1 [default: 0.25].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abstention: Option<f64>,
    /// FAQ examples at most [default: 200].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_examples: Option<usize>,
    /// Questions never made into examples: a JSON-lines file whose records' `question`s are
    /// left out (case and spacing ignored), e.g. an evaluation's test split. Records with a
    /// `split` field count only when it is `test`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude: Option<PathBuf>,
}

/// `[gate]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSection {
    /// The candidate's answer loss on the regression set (every corrected question) over
    /// production's may be at most this [default: 1.0: match or beat production].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_loss_ratio: Option<f64>,
    /// The merged weights' logits against base + adapter, both in f32: the largest
    /// root-mean-square difference allowed, relative to the logits' RMS [default: 0.001].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parity_tolerance: Option<f64>,
    /// Held-out questions: JSON lines with `question`, the reference `answer` and optionally
    /// `source_doc` (only the `test` split when records carry `split`). Each is answered from
    /// the knowledge base's passages; the gate compares answer loss against the reference and
    /// the share of the reference's facts the greedy answer states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub questions: Option<PathBuf>,
    /// Without `questions`: the share of the admitted feedback's questions the worker holds
    /// out of training and the gate answers with both models from the passages they were
    /// served with, scored against the agent's or accepted answer. Chosen by a hash of the
    /// question, so the same questions stay out job after job [default: 0.2]. With none held
    /// out (too little feedback), the job does not promote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_out: Option<f64>,
    /// At most this many held-out questions [default: 16].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_questions: Option<usize>,
    /// The knowledge base the held-out questions are answered from [default: `default`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knowledge_base: Option<String>,
    /// The candidate's held-out answer loss over production's may be at most this
    /// [default: 1.05].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_held_out_loss_ratio: Option<f64>,
    /// The candidate's mean fact recall, token F1 and support on the held-out questions may
    /// trail production's, and its abstentions exceed production's, by at most this
    /// [default: 0.05].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fact_tolerance: Option<f64>,
    /// Held-out preference pairs (any shape the DPO stage reads; only the `test` split when
    /// records carry `split`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairs: Option<PathBuf>,
    /// At most this many held-out pairs [default: 32].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pairs: Option<usize>,
    /// The candidate's preference accuracy on the held-out pairs may trail production's by at
    /// most this [default: 0.05].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair_tolerance: Option<f64>,
}

/// `[lora]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// Projections: q, k, v, o, gate, up, down (or their PEFT names, `q_proj`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
}

/// `[cpt]`, `[sft]` or `[dpo]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// CPT: a folder of documents (or one file); SFT and DPO: a JSON-lines file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accum: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// SFT / DPO: longest example in tokens; CPT: the block length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// Evaluate on at most this many held-out items (0: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// SFT / DPO: train on the lines whose `split` field is this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// SFT / DPO: evaluate on the lines whose `split` field is this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_split: Option<String>,
    /// `skip` or `fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_bad_line: Option<String>,
    /// DPO only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
}

impl Recipe {
    /// Parses and checks a recipe; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let recipe: Recipe =
            toml::from_str(text).map_err(|e| TrainError::Config(format!("{origin}: {e}")))?;
        recipe.check(origin)?;
        Ok(recipe)
    }

    /// Reads and checks the recipe file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The recipe as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe serializes")
    }

    /// Writes the recipe to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_toml()).map_err(|e| TrainError::io(path, e))
    }

    pub fn stage(&self, kind: StageKind) -> Option<&Stage> {
        match kind {
            StageKind::Cpt => self.cpt.as_ref(),
            StageKind::Sft => self.sft.as_ref(),
            StageKind::Dpo => self.dpo.as_ref(),
            StageKind::Kto => self.kto.as_ref(),
        }
    }

    /// The stages present, in the order a full run takes them.
    pub fn stages(&self) -> Vec<StageKind> {
        StageKind::ALL
            .into_iter()
            .filter(|k| self.stage(*k).is_some())
            .collect()
    }

    fn check(&self, origin: &str) -> Result<()> {
        let fail = |msg: String| Err(TrainError::Config(format!("{origin}: {msg}")));
        if let Some(weights) = &self.base_weights
            && !["q8_0", "q4", "f32"].contains(&weights.as_str())
        {
            return fail(format!("base_weights is q8_0, q4 or f32, not `{weights}`"));
        }
        if let Some(gate) = &self.gate {
            let positive = [
                ("max_loss_ratio", gate.max_loss_ratio),
                ("max_held_out_loss_ratio", gate.max_held_out_loss_ratio),
            ];
            for (name, value) in positive {
                if let Some(v) = value
                    && !(v.is_finite() && v > 0.0)
                {
                    return fail(format!("[gate] {name} is a positive number, not {v}"));
                }
            }
            let tolerances = [
                ("parity_tolerance", gate.parity_tolerance),
                ("fact_tolerance", gate.fact_tolerance),
                ("pair_tolerance", gate.pair_tolerance),
            ];
            for (name, value) in tolerances {
                if let Some(v) = value
                    && !(0.0..=1.0).contains(&v)
                {
                    return fail(format!("[gate] {name} is between 0 and 1, not {v}"));
                }
            }
            if let Some(share) = gate.hold_out
                && !(share > 0.0 && share <= 0.5)
            {
                return fail(format!(
                    "[gate] hold_out is a share above 0 and at most 0.5, not {share}"
                ));
            }
            for (name, value) in [
                ("max_questions", gate.max_questions),
                ("max_pairs", gate.max_pairs),
            ] {
                if value == Some(0) {
                    return fail(format!("[gate] {name} is at least 1"));
                }
            }
        }
        if let Some(knowledge) = &self.knowledge {
            if let Some(share) = knowledge.abstention
                && !(0.0..=1.0).contains(&share)
            {
                return fail(format!(
                    "[knowledge] abstention is a share between 0 and 1, not {share}"
                ));
            }
            if knowledge.max_examples == Some(0) {
                return fail("[knowledge] max_examples is at least 1".into());
            }
        }
        for kind in StageKind::ALL {
            let Some(stage) = self.stage(kind) else {
                continue;
            };
            let name = kind.name();
            if stage.beta.is_some() && !kind.has_beta() {
                return fail(format!("[{name}] beta is a DPO setting (and KTO's)"));
            }
            if kind == StageKind::Cpt && (stage.split.is_some() || stage.eval_split.is_some()) {
                return fail(
                    "[cpt] reads documents, which have no split field; use eval_fraction".into(),
                );
            }
            if let Some(rule) = &stage.on_bad_line
                && rule != "skip"
                && rule != "fail"
            {
                return fail(format!(
                    "[{name}] on_bad_line is skip or fail, not `{rule}`"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_recipe_reads_and_writes_back_the_same() {
        let text = r#"
            model = "smollm2-135m-instruct"
            base_weights = "q4"
            seed = 7
            [lora]
            rank = 16
            alpha = 32.0
            dropout = 0.05
            targets = ["q", "v"]
            [cpt]
            data = "kb/en"
            max_len = 256
            [sft]
            data = "qa.jsonl"
            split = "train"
            eval_split = "test"
            lr = 1e-4
            [dpo]
            data = "pairs.jsonl"
            beta = 0.2
            [knowledge]
            abstention = 0.5
            exclude = "test.jsonl"
        "#;
        let recipe = Recipe::parse(text, "r.toml").unwrap();
        assert_eq!(recipe.lora.as_ref().unwrap().rank, Some(16));
        assert_eq!(recipe.dpo.as_ref().unwrap().beta, Some(0.2));
        assert_eq!(recipe.knowledge.as_ref().unwrap().abstention, Some(0.5));
        assert_eq!(
            recipe.stages(),
            vec![StageKind::Cpt, StageKind::Sft, StageKind::Dpo]
        );
        let again = Recipe::parse(&recipe.to_toml(), "again").unwrap();
        assert_eq!(again, recipe);
    }

    #[test]
    fn unknown_keys_and_misplaced_settings_are_refused_with_their_names() {
        for (text, needle) in [
            ("modle = \"x\"", "modle"),
            ("[lora]\nrank = 8\nranks = 4", "ranks"),
            ("[sft]\nlearning_rate = 0.1", "learning_rate"),
            ("[orpo]\ndata = \"x\"", "orpo"),
            ("[sft]\nbeta = 0.1", "beta is a DPO setting"),
            ("[cpt]\nsplit = \"train\"", "no split field"),
            ("base_weights = \"q2\"", "q8_0, q4 or f32"),
            ("[dpo]\non_bad_line = \"ignore\"", "skip or fail"),
            ("[sft]\nbatch = \"four\"", "batch"),
            ("[gate]\nmax_held_out_loss_ratio = 0.0", "positive number"),
            ("[gate]\nfact_tolerance = 1.5", "between 0 and 1"),
            ("[gate]\nhold_out = 0.0", "hold_out is a share above 0"),
            ("[gate]\nhold_out = 0.9", "at most 0.5"),
            ("[gate]\nmax_pairs = 0", "max_pairs is at least 1"),
            ("[gate]\nquestion = \"q.jsonl\"", "question"),
            (
                "[knowledge]\nabstention = 1.5",
                "abstention is a share between 0 and 1",
            ),
            (
                "[knowledge]\nabstention = -0.1",
                "abstention is a share between 0 and 1",
            ),
            (
                "[knowledge]\nmax_examples = 0",
                "max_examples is at least 1",
            ),
            ("[knowledge]\nfaq = true", "faq"),
            ("seed = ", "r.toml"),
        ] {
            let error = Recipe::parse(text, "r.toml").unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?}: {error}");
            assert!(error.contains("r.toml"), "{text:?}: {error}");
        }
    }
}
