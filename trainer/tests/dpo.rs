//! DPO with LoRA on a tiny random-weight model: the first step's loss is exactly log 2 (the
//! policy starts as its reference), the loss falls and the reward accuracy rises on a small
//! fixture, and the figures reach the metrics file.

use std::path::Path;

use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{Architecture, LoadOptions, LoadedModel};
use kefu_trainer::data::OnBadLine;
use kefu_trainer::dpo;
use kefu_trainer::lora::LoraConfig;
use kefu_trainer::run::TrainConfig;

fn tiny(dir: &Path) -> LoadedModel {
    let path = write_tiny_gguf(dir, &TinySpec::new(Architecture::Qwen2));
    LoadedModel::load(&path, &LoadOptions::default()).unwrap()
}

#[test]
fn dpo_learns_the_preferred_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    let lines = [
        r#"{"prompt": "Can I return a parcel?", "history": [], "chosen": "yes within thirty days", "rejected": "no"}"#,
        r#"{"prompt": "Is shipping free?", "chosen": [{"role": "assistant", "content": "over fifty euros"}], "rejected": [{"role": "assistant", "content": "never ever"}]}"#,
        r#"{"system": "Be kind.", "conversations": [{"from": "human", "value": "Where is my order?"}], "chosen": {"from": "gpt", "value": "let me check the tracking"}, "rejected": {"from": "gpt", "value": "not my problem"}}"#,
        r#"{"prompt": "Hello", "chosen": "hello, how can I help", "rejected": "what"}"#,
        "not json",
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let loaded = dpo::read_pairs(&path, OnBadLine::Skip).unwrap();
    assert_eq!(loaded.pairs.len(), 4);
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].0, 5);

    let mut model = tiny(dir.path());
    let pairs: Vec<_> = loaded
        .pairs
        .iter()
        .map(|p| dpo::tokenize_pair(&model, p, 256).unwrap().unwrap())
        .collect();
    let config = TrainConfig {
        lora: LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
        epochs: 25,
        learning_rate: 5e-3,
        batch_size: 2,
        warmup_ratio: 0.1,
        beta: 0.5,
        ..TrainConfig::default()
    };
    let output = dir.path().join("run");
    let mut losses = Vec::new();
    let report = dpo::train(
        &mut model,
        "tiny",
        &pairs,
        &pairs,
        &config,
        &output,
        false,
        |_, _, loss| {
            losses.push(loss);
            true
        },
    )
    .unwrap();
    assert!(
        (losses[0] - 2f64.ln()).abs() < 1e-4,
        "the first loss is log 2: {}",
        losses[0]
    );
    let eval = |name: &str| {
        report
            .eval_metrics
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} in {:?}", report.eval_metrics))
            .1
    };
    assert!(report.eval_loss.unwrap() < 0.3, "{:?}", report.eval_loss);
    assert_eq!(eval("reward_accuracy"), 1.0);
    assert!(eval("margin") > 1.0);
    assert!(eval("chosen_reward") > eval("rejected_reward"));
    let metrics = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    for key in [
        "loss",
        "reward_accuracy",
        "margin",
        "chosen_reward",
        "rejected_reward",
        "eval_reward_accuracy",
    ] {
        assert!(last[key].is_f64(), "{key} in {last}");
    }
    // β must be positive.
    let bad = TrainConfig {
        beta: 0.0,
        ..config
    };
    assert!(
        dpo::train(
            &mut tiny(dir.path()),
            "tiny",
            &pairs,
            &[],
            &bad,
            &output,
            false,
            |_, _, _| true
        )
        .is_err()
    );
}
