//! SFT with LoRA on tiny random-weight models of the real architectures (GGUF, quantized base):
//! the loss falls on a small fixture, only answer tokens count, adapters round-trip through
//! PEFT's layout with identical logits, a stopped run resumes to the same weights as an
//! uninterrupted one, and bad data is reported with line numbers.

use std::path::Path;

use candle_core::{Device, Tensor};
use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{Architecture, LoadOptions, LoadedModel};
use kefu_trainer::TrainError;
use kefu_trainer::data::{self, OnBadLine, Tokenized};
use kefu_trainer::lora::{Adapters, LoraConfig};
use kefu_trainer::run::TrainConfig;
use kefu_trainer::sft;

fn tiny(dir: &Path, architecture: Architecture) -> LoadedModel {
    let path = write_tiny_gguf(dir, &TinySpec::new(architecture));
    LoadedModel::load(&path, &LoadOptions::default()).unwrap()
}

fn fixture(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("train.jsonl");
    let lines = [
        r#"{"question": "What colour is the sky?", "answer": "blue"}"#,
        r#"{"instruction": "Name a fruit", "input": "", "output": "apple"}"#,
        r#"{"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}]}"#,
        r#"{"conversations": [{"from": "human", "value": "Count to three"}, {"from": "gpt", "value": "one two three"}]}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn tokenized(model: &LoadedModel, path: &Path) -> Vec<Tokenized> {
    let loaded = data::read_jsonl(path, OnBadLine::Fail).unwrap();
    loaded
        .conversations
        .iter()
        .map(|c| data::tokenize(model, c, 256).unwrap().unwrap())
        .collect()
}

fn config() -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
        epochs: 30,
        learning_rate: 1e-2,
        batch_size: 2,
        warmup_ratio: 0.1,
        ..TrainConfig::default()
    }
}

#[test]
fn the_loss_falls_and_only_answer_tokens_count() {
    for architecture in Architecture::ALL {
        let dir = tempfile::tempdir().unwrap();
        let mut model = tiny(dir.path(), architecture);
        let examples = tokenized(&model, &fixture(dir.path()));
        // The answer's tokens (and the end of turn) are the only targets, at the end.
        let first = &examples[0];
        let answer_start = first.targets.iter().position(Option::is_some).unwrap();
        assert!(answer_start > 3, "the prompt is not a target");
        assert!(first.targets[answer_start..].iter().all(Option::is_some));
        assert_eq!(first.input.len(), first.targets.len());
        let before = sft::mean_loss(&model, &examples, 4).unwrap();
        let output = dir.path().join("run");
        let report = sft::train(
            &mut model,
            "tiny",
            &examples,
            &examples,
            &config(),
            &output,
            false,
            |_, _, _| true,
        )
        .unwrap();
        let after = sft::mean_loss(&model, &examples, 4).unwrap();
        assert!(after < before * 0.5, "{architecture:?}: {before} → {after}");
        assert_eq!(report.steps, 60);
        assert!(report.last_loss < report.first_loss);
        let metrics = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = metrics
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // The starting model's evaluation, then one line per step.
        assert_eq!(lines.len(), 61);
        assert_eq!(lines[0]["step"], 0);
        let base_eval = lines[0]["eval_loss"].as_f64().unwrap();
        assert!((base_eval - report.base_eval.as_ref().unwrap().0).abs() < 1e-12);
        let lines = &lines[1..];
        assert!(lines.iter().all(|l| l["loss"].is_f64()
            && l["learning_rate"].is_f64()
            && l["tokens_per_second"].is_f64()));
        let last_eval = lines.last().unwrap()["eval_loss"].as_f64().unwrap();
        assert!(last_eval < base_eval, "{base_eval} → {last_eval}");
    }
}

#[test]
fn adapters_round_trip_through_the_peft_layout() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny(dir.path(), Architecture::Llama);
    let examples = tokenized(&model, &fixture(dir.path()));
    let config = TrainConfig {
        epochs: 2,
        ..config()
    };
    let report = sft::train(
        &mut model,
        "tiny",
        &examples,
        &[],
        &config,
        &dir.path().join("run"),
        false,
        |_, _, _| true,
    )
    .unwrap();
    let x = Tensor::new(&[[5u32, 9, 77, 120, 3, 44]], &Device::Cpu).unwrap();
    let trained = model.decoder.forward_all(&x).unwrap();

    let peft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report.adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(peft["peft_type"], "LORA");
    assert_eq!(peft["r"], 4);
    assert_eq!(peft["lora_alpha"], 8.0);
    assert_eq!(peft["target_modules"].as_array().unwrap().len(), 7);
    let tensors = candle_core::safetensors::load(
        report.adapter_dir.join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let a = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert_eq!(a.dims()[0], 4);
    assert_eq!(b.dims()[1], 4);

    let mut fresh = tiny(dir.path(), Architecture::Llama);
    let base = fresh.decoder.forward_all(&x).unwrap();
    Adapters::load(&mut fresh.decoder, &report.adapter_dir).unwrap();
    let loaded = fresh.decoder.forward_all(&x).unwrap();
    let diff: f32 = (&loaded - &trained)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
    let moved: f32 = (&base - &trained)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(moved > 1e-3, "training changed the model: {moved}");

    // An adapter for another shape of model is refused with a clear error.
    let other_dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        hidden: 32,
        ..TinySpec::new(Architecture::Llama)
    };
    let mut other = LoadedModel::load(
        &write_tiny_gguf(other_dir.path(), &spec),
        &LoadOptions::default(),
    )
    .unwrap();
    let err = Adapters::load(&mut other.decoder, &report.adapter_dir).unwrap_err();
    assert!(err.to_string().contains("another model"), "{err}");
}

#[test]
fn a_stopped_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let examples = {
        let model = tiny(dir.path(), Architecture::Qwen2);
        tokenized(&model, &fixture(dir.path()))
    };
    // With adapter dropout: the masks are drawn again the same way after the resume.
    let config = TrainConfig {
        epochs: 3,
        eval_every: 2,
        lora: LoraConfig {
            dropout: 0.1,
            ..config().lora
        },
        ..config()
    };
    let weights = |output: &Path| {
        candle_core::safetensors::load(
            output.join("adapter/adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap()
    };

    let mut straight = tiny(dir.path(), Architecture::Qwen2);
    let whole = dir.path().join("whole");
    sft::train(
        &mut straight,
        "tiny",
        &examples,
        &examples,
        &config,
        &whole,
        false,
        |_, _, _| true,
    )
    .unwrap();

    let mut first = tiny(dir.path(), Architecture::Qwen2);
    let split = dir.path().join("split");
    let err = sft::train(
        &mut first,
        "tiny",
        &examples,
        &examples,
        &config,
        &split,
        false,
        |step, _, _| step < 4,
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Interrupted(4)), "{err}");
    let progress: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(split.join("checkpoint/progress.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(progress["step"], 4);
    let mut second = tiny(dir.path(), Architecture::Qwen2);
    let report = sft::train(
        &mut second,
        "tiny",
        &examples,
        &examples,
        &config,
        &split,
        true,
        |_, _, _| true,
    )
    .unwrap();
    assert_eq!(report.steps, 6);

    let (a, b) = (weights(&whole), weights(&split));
    for (name, tensor) in &a {
        let diff: f32 = (tensor - &b[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-6, "{name}: {diff}");
    }
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(split.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["lora_dropout"], 0.1);
}

#[test]
fn bad_lines_are_reported_with_their_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"question\": \"q\", \"answer\": \"a\"}\nnot json\n\n{\"foo\": 1}\n{\"question\": \"q\", \"answer\": \"a\"}\n{\"question\": \"q2\", \"answer\": \"\"}\n",
    )
    .unwrap();
    let loaded = data::read_jsonl(&path, OnBadLine::Skip).unwrap();
    assert_eq!(loaded.conversations.len(), 1);
    assert_eq!(loaded.duplicates, 1);
    let lines: Vec<usize> = loaded.skipped.iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, [2, 4, 6]);
    assert!(loaded.skipped[0].1.contains("not JSON"));
    let err = data::read_jsonl(&path, OnBadLine::Fail)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("not JSON"), "{err}");
    std::fs::write(&path, "").unwrap();
    assert!(
        data::read_jsonl(&path, OnBadLine::Skip)
            .unwrap_err()
            .to_string()
            .contains("no usable examples")
    );
    std::fs::write(&path, b"\xff\xfe").unwrap();
    assert!(
        data::read_jsonl(&path, OnBadLine::Skip)
            .unwrap_err()
            .to_string()
            .contains("not UTF-8")
    );
    assert!(data::read_jsonl(&dir.path().join("missing.jsonl"), OnBadLine::Skip).is_err());

    // The `split` field selects lines.
    std::fs::write(
        &path,
        "{\"question\": \"q1\", \"answer\": \"a\", \"split\": \"train\"}\n\
         {\"question\": \"q2\", \"answer\": \"a\", \"split\": \"test\"}\n\
         {\"question\": \"q3\", \"answer\": \"a\", \"split\": \"train\"}\n",
    )
    .unwrap();
    let train = data::read_jsonl_split(&path, OnBadLine::Fail, Some("train")).unwrap();
    let test = data::read_jsonl_split(&path, OnBadLine::Fail, Some("test")).unwrap();
    assert_eq!(
        (train.conversations.len(), test.conversations.len()),
        (2, 1)
    );
    assert_eq!(test.conversations[0].messages[0].content, "q2");
    let none = data::read_jsonl_split(&path, OnBadLine::Fail, Some("dev")).unwrap_err();
    assert!(none.to_string().contains("split `dev`"), "{none}");

    // Settings out of range.
    let mut model = tiny(dir.path(), Architecture::Llama);
    let examples = tokenized(&model, &fixture(dir.path()));
    for bad in [
        TrainConfig {
            batch_size: 0,
            ..config()
        },
        TrainConfig {
            learning_rate: 0.0,
            ..config()
        },
        TrainConfig {
            lora: LoraConfig {
                rank: 0,
                ..LoraConfig::default()
            },
            ..config()
        },
    ] {
        let err = sft::train(
            &mut model,
            "tiny",
            &examples,
            &[],
            &bad,
            &dir.path().join("x"),
            false,
            |_, _, _| true,
        )
        .unwrap_err();
        assert!(matches!(err, TrainError::Config(_)), "{err}");
    }
    assert!(LoraConfig::parse_targets("q,v,wizard").is_err());
    assert_eq!(LoraConfig::parse_targets("q_proj, v").unwrap().len(), 2);
}

/// A batch is packed into fewer rows than examples (several examples per row); each
/// example's summed log-probability is the one it gets alone.
#[test]
fn a_packed_batch_scores_each_example_as_it_scores_alone() {
    for architecture in Architecture::ALL {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny(dir.path(), architecture);
        let mut examples = tokenized(&model, &fixture(dir.path()));
        // A long example, so that the short ones share a row.
        let mut long = examples[0].clone();
        for e in &examples[1..] {
            long.input.extend(&e.input);
            long.targets.extend(&e.targets);
        }
        // Within the tiny model's context.
        long.input.truncate(200);
        long.targets.truncate(200);
        examples.push(long);
        let refs: Vec<&Tokenized> = examples.iter().collect();
        let (together, counted) = sft::answer_logprobs(&model, &refs).unwrap();
        let together: Vec<f32> = together.to_vec1().unwrap();
        assert_eq!(
            counted,
            examples.iter().map(Tokenized::answer_tokens).sum::<usize>()
        );
        for (i, e) in examples.iter().enumerate() {
            let (alone, _) = sft::answer_logprobs(&model, &[e]).unwrap();
            let alone: Vec<f32> = alone.to_vec1().unwrap();
            let diff = (alone[0] - together[i]).abs();
            assert!(
                diff < 1e-3 * alone[0].abs().max(1.0),
                "{architecture:?} example {i}: {} alone, {} in the batch",
                alone[0],
                together[i]
            );
        }
    }
}
