//! KTO with LoRA on a tiny random-weight model: the first step's loss is exactly 1/2 (the
//! policy starts as its reference, so every ratio and the KL estimate are zero), the loss falls,
//! good answers become likelier and bad ones less likely than under the reference, and the
//! figures reach the metrics file.

use std::path::Path;

use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{Architecture, LoadOptions, LoadedModel};
use kefu_trainer::data::OnBadLine;
use kefu_trainer::kto;
use kefu_trainer::lora::LoraConfig;
use kefu_trainer::run::TrainConfig;

fn tiny(dir: &Path) -> LoadedModel {
    let path = write_tiny_gguf(dir, &TinySpec::new(Architecture::Qwen2));
    LoadedModel::load(&path, &LoadOptions::default()).unwrap()
}

#[test]
fn kto_makes_good_answers_likelier_and_bad_ones_less_likely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kto.jsonl");
    let lines = [
        r#"{"prompt": "Can I return a parcel?", "completion": "yes within thirty days", "label": true}"#,
        r#"{"prompt": "Can I return a shirt?", "completion": "no", "label": false}"#,
        r#"{"prompt": [{"role": "user", "content": "Is shipping free?"}], "completion": [{"role": "assistant", "content": "over fifty euros"}], "label": true}"#,
        r#"{"prompt": "Is delivery free?", "completion": "never ever", "label": false}"#,
        r#"{"system": "Be kind.", "conversations": [{"from": "human", "value": "Where is my order?"}, {"from": "gpt", "value": "let me check the tracking"}], "kto_tag": true}"#,
        r#"{"system": "Be kind.", "conversations": [{"from": "human", "value": "Where is my box?"}, {"from": "gpt", "value": "not my problem"}], "kto_tag": false}"#,
        r#"{"prompt": "Hello", "completion": "what", "label": "maybe"}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let loaded = kto::read_unpaired_split(&path, OnBadLine::Skip, None).unwrap();
    assert_eq!(loaded.examples.len(), 6);
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].0, 7);
    assert!(
        loaded.skipped[0].1.contains("true or false"),
        "{:?}",
        loaded.skipped
    );
    assert_eq!(loaded.examples.iter().filter(|e| e.desirable).count(), 3);
    // A bad line is fatal when asked.
    assert!(kto::read_unpaired_split(&path, OnBadLine::Fail, None).is_err());

    let mut model = tiny(dir.path());
    let (examples, too_long) = kto::tokenize_all(&model, &loaded.examples, 256).unwrap();
    assert_eq!((examples.len(), too_long), (6, 0));
    let config = TrainConfig {
        lora: LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
        epochs: 25,
        learning_rate: 5e-3,
        batch_size: 3,
        warmup_ratio: 0.1,
        beta: 0.5,
        ..TrainConfig::default()
    };
    let output = dir.path().join("run");
    let mut losses = Vec::new();
    let report = kto::train(
        &mut model,
        "tiny",
        &examples,
        &examples,
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
        (losses[0] - 0.5).abs() < 1e-4,
        "the first loss is 1/2: {}",
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
    assert!(report.eval_loss.unwrap() < 0.35, "{:?}", report.eval_loss);
    assert!(
        eval("desirable_reward") > 0.0 && eval("undesirable_reward") < 0.0,
        "{:?}",
        report.eval_metrics
    );
    let metrics = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    for key in ["loss", "desirable_reward", "undesirable_reward", "kl"] {
        assert!(last[key].is_f64(), "{key} in {last}");
    }
    // β must be positive.
    let bad = TrainConfig {
        beta: 0.0,
        ..config
    };
    assert!(
        kto::train(
            &mut tiny(dir.path()),
            "tiny",
            &examples,
            &[],
            &bad,
            &output,
            false,
            |_, _, _| true
        )
        .is_err()
    );
}
