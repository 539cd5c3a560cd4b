//! Continued pre-training on a tiny model of the real architecture: documents are packed into
//! blocks that continue one token stream, the held-out blocks are disjoint from the training
//! ones, and training on real knowledge-base pages lowers the held-out perplexity.

use std::path::Path;

use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{Architecture, LoadOptions, LoadedModel};
use kefu_trainer::lora::LoraConfig;
use kefu_trainer::run::TrainConfig;
use kefu_trainer::{TrainError, cpt, sft};

fn tiny(dir: &Path) -> LoadedModel {
    let path = write_tiny_gguf(dir, &TinySpec::new(Architecture::Llama));
    LoadedModel::load(&path, &LoadOptions::default()).unwrap()
}

fn documents() -> Vec<String> {
    let folder =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/kb/en/abcd-guidelines");
    let mut names: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
        .iter()
        .take(3)
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

#[test]
fn documents_pack_into_blocks_of_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let texts = vec!["first document".to_string(), "second one".to_string()];
    let blocks = cpt::blocks(&model, &texts, 4).unwrap();
    let end = model.tokenizer.token_to_id("<|endoftext|>").unwrap();
    let mut stream = model.encode("first document").unwrap();
    stream.push(end);
    stream.extend(model.encode("second one").unwrap());
    stream.push(end);
    // Blocks of 4 inputs predicting the 4 tokens after each; the last partial block is dropped.
    assert_eq!(blocks.len(), (stream.len() - 1) / 4);
    for (i, block) in blocks.iter().enumerate() {
        assert_eq!(block.input, stream[i * 4..i * 4 + 4]);
        let next: Vec<Option<u32>> = stream[i * 4 + 1..i * 4 + 5]
            .iter()
            .copied()
            .map(Some)
            .collect();
        assert_eq!(block.targets, next, "every position is a target");
    }
    // Too little text for one block, and a block of one token, are refused.
    let err = cpt::blocks(&model, &["hi".to_string()], 64).unwrap_err();
    assert!(matches!(err, TrainError::Data(_)), "{err}");
    assert!(cpt::blocks(&model, &texts, 1).is_err());
    assert!(cpt::blocks(&model, &["   ".to_string()], 4).is_err());
}

#[test]
fn training_on_documents_lowers_held_out_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny(dir.path());
    let blocks = cpt::blocks(&model, &documents(), 64).unwrap();
    let (train, eval) = cpt::split(blocks.clone(), 0.2);
    assert!(!eval.is_empty() && train.len() > eval.len());
    assert!(
        eval.iter().all(|e| !train.contains(e)),
        "held out means unseen"
    );
    assert_eq!(
        cpt::split(blocks, 0.2).1,
        eval,
        "the split is the same on every run"
    );
    let config = TrainConfig {
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            ..LoraConfig::default()
        },
        max_steps: 40,
        epochs: 10,
        learning_rate: 1e-2,
        batch_size: 4,
        ..TrainConfig::default()
    };
    let report = sft::train(
        &mut model,
        "tiny",
        &train,
        &eval,
        &config,
        &dir.path().join("run"),
        false,
        |_, _, _| true,
    )
    .unwrap();
    let (base_loss, base_figures) = report.base_eval.clone().unwrap();
    let perplexity = |figures: &[(String, f64)]| {
        figures
            .iter()
            .find(|(n, _)| n == "perplexity")
            .map(|(_, v)| *v)
            .unwrap()
    };
    let before = perplexity(&base_figures);
    let after = perplexity(&report.eval_metrics);
    assert!((before - base_loss.exp()).abs() < 1e-6 * before);
    eprintln!("held-out perplexity {before:.1} → {after:.1}");
    assert!(after < before * 0.8, "{before} → {after}");
}
