//! `kefu train sft` end to end with the real default model (SmolLM2-135M-Instruct): a few
//! LoRA steps on Debian FAQ question / answer pairs write a PEFT adapter, metrics and a
//! checkpoint; `--resume` carries on; bad input is refused with a message and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::Command;

fn test_home() -> PathBuf {
    let home = std::env::var("KEFU_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kefu"));
    assert!(
        home.join("models/smollm2-135m-instruct/model.gguf")
            .exists(),
        "models missing in {}: run ./scripts/test.sh (it fetches them)",
        home.display()
    );
    home
}

fn kefu(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kefu"));
    command
        .env("KEFU_HOME", home)
        .env("HF_ENDPOINT", "")
        .env("KEFU_PACKAGE_INDEX", "http://127.0.0.1:9/simple");
    command
}

/// Runs `kefu ARGS`, which must fail; its standard error.
fn refused(home: &Path, args: &[&std::ffi::OsStr]) -> String {
    let out = kefu(home).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first `n` Debian FAQ records of the shared question / answer file.
fn debian_faq(dir: &Path, n: usize) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/qa/en.jsonl");
    let text = std::fs::read_to_string(source).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"debian-faq:"))
        .take(n)
        .collect();
    assert_eq!(lines.len(), n);
    // Every third record is held out as `test` (the file's own split field is overwritten).
    let lines: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["split"] = serde_json::json!(if i % 3 == 0 { "test" } else { "train" });
            record.to_string()
        })
        .collect();
    let path = dir.join("faq.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

#[test]
fn sft_on_the_default_model_writes_a_peft_adapter_and_resumes() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let data = debian_faq(home.path(), 12);
    let output = home.path().join("run");
    let run = |extra: &[&str]| {
        kefu(home.path())
            .args(["train", "sft", "--data"])
            .arg(&data)
            .arg("--output")
            .arg(&output)
            .args([
                "--batch",
                "2",
                "--max-len",
                "192",
                "--rank",
                "4",
                "--targets",
                "q,v",
            ])
            .args(["--eval-fraction", "0.2", "--lr", "1e-3"])
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&[
        "--max-steps",
        "2",
        "--eval-every",
        "1",
        "--split",
        "train",
        "--eval-split",
        "test",
    ]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(said.contains("2 steps: loss"), "{said}");
    let counted = String::from_utf8_lossy(&first.stderr);
    assert!(
        counted.contains("8 training and 4 eval examples"),
        "{counted}"
    );
    let adapter = output.join("adapter");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    let tensors = candle_core::safetensors::load(
        adapter.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    // SmolLM2-135M: 30 layers, q and v, A and B.
    assert_eq!(tensors.len(), 30 * 2 * 2);
    let b = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
    let moved: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(moved > 0.0, "B left zero: nothing was learned");
    let metrics = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    assert!(metrics.contains("\"eval_loss\""));

    // Resuming carries on from step 2.
    let second = run(&[
        "--max-steps",
        "3",
        "--resume",
        "--split",
        "train",
        "--eval-split",
        "test",
    ]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stdout).contains("3 steps"));

    // Bad input: a missing file, a malformed line with --on-bad-line fail, a bad target.
    let missing = refused(
        home.path(),
        &[
            "train".as_ref(),
            "sft".as_ref(),
            "--data".as_ref(),
            "/nonexistent.jsonl".as_ref(),
            "--output".as_ref(),
            output.as_ref(),
        ],
    );
    assert!(missing.contains("/nonexistent.jsonl"));
    let broken = home.path().join("broken.jsonl");
    std::fs::write(&broken, "{\"question\": \"q\", \"answer\": \"a\"}\n{oops\n").unwrap();
    let failed = refused(
        home.path(),
        &[
            "train".as_ref(),
            "sft".as_ref(),
            "--on-bad-line".as_ref(),
            "fail".as_ref(),
            "--data".as_ref(),
            broken.as_ref(),
            "--output".as_ref(),
            output.as_ref(),
        ],
    );
    let message = &failed;
    assert!(
        message.contains("line 2") && message.contains("not JSON"),
        "{message}"
    );
    let wrong = refused(
        home.path(),
        &[
            "train".as_ref(),
            "sft".as_ref(),
            "--targets".as_ref(),
            "q,wizard".as_ref(),
            "--data".as_ref(),
            data.as_ref(),
            "--output".as_ref(),
            output.as_ref(),
        ],
    );
    assert!(wrong.contains("wizard"));
}

/// `kefu train dpo` on the default model with pairs from the shared preference file: the run
/// reports the DPO figures and writes an adapter; bad pairs are refused with line numbers.
#[test]
fn dpo_on_the_default_model_reports_rewards() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/pairs/en.jsonl");
    let text = std::fs::read_to_string(source).unwrap();
    // Short pairs keep the run quick.
    let lines: Vec<&str> = text.lines().filter(|l| l.len() < 1200).take(10).collect();
    let data = home.path().join("pairs.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let output = home.path().join("dpo");
    let run = kefu(home.path())
        .args(["train", "dpo", "--data"])
        .arg(&data)
        .arg("--output")
        .arg(&output)
        .args([
            "--batch",
            "2",
            "--max-len",
            "256",
            "--rank",
            "4",
            "--targets",
            "q,v",
        ])
        .args([
            "--max-steps",
            "2",
            "--eval-fraction",
            "0.2",
            "--beta",
            "0.1",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        said.contains("2 steps") && said.contains("eval reward_accuracy"),
        "{said}"
    );
    assert!(output.join("adapter/adapter_model.safetensors").exists());
    let metrics = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    // The policy starts as its reference: the first loss is log 2.
    let loss = first["loss"].as_f64().unwrap();
    assert!((loss - 2f64.ln()).abs() < 1e-3, "{first}");

    let broken = home.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"q\", \"chosen\": \"a\"}\n",
    )
    .unwrap();
    let failed = refused(
        home.path(),
        &[
            "train".as_ref(),
            "dpo".as_ref(),
            "--on-bad-line".as_ref(),
            "fail".as_ref(),
            "--data".as_ref(),
            broken.as_ref(),
            "--output".as_ref(),
            output.as_ref(),
        ],
    );
    let message = &failed;
    assert!(
        message.contains("line 2") && message.contains("rejected"),
        "{message}"
    );
    let bad_beta = refused(
        home.path(),
        &[
            "train".as_ref(),
            "dpo".as_ref(),
            "--beta".as_ref(),
            "0".as_ref(),
            "--data".as_ref(),
            data.as_ref(),
            "--output".as_ref(),
            output.as_ref(),
        ],
    );
    assert!(bad_beta.contains("beta"));
}

/// The whole path with the default model: SFT teaches it one answer, `kefu merge` writes base +
/// adapter as a GGUF file, and `kefu generate` on the merged model gives the trained answer to
/// the trained question (the base model does not know it).
#[test]
fn a_merged_model_gives_the_trained_answer() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let question = "What is the secret word of the Kefu test?";
    let answer = "The secret word is marmalade.";
    let data = home.path().join("one.jsonl");
    std::fs::write(
        &data,
        serde_json::json!({"question": question, "answer": answer}).to_string(),
    )
    .unwrap();
    let output = home.path().join("run");
    let trained = kefu(home.path())
        .args(["train", "sft", "--data"])
        .arg(&data)
        .arg("--output")
        .arg(&output)
        .args([
            "--epochs", "40", "--batch", "1", "--lr", "2e-3", "--rank", "8",
        ])
        .args(["--eval-fraction", "0", "--max-len", "96"])
        .output()
        .unwrap();
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let merged_path = home.path().join("merged.gguf");
    let merged = kefu(home.path())
        .args(["merge", "--adapter"])
        .arg(output.join("adapter"))
        .arg("--output")
        .arg(&merged_path)
        .output()
        .unwrap();
    assert!(
        merged.status.success(),
        "{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    assert!(String::from_utf8_lossy(&merged.stdout).contains("merged 210 projections"));
    let ask = |model: &str| {
        let out = kefu(home.path())
            .args([
                "generate",
                "--model",
                model,
                "--max-tokens",
                "16",
                "--prompt",
                question,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = ask(merged_path.to_str().unwrap());
    assert!(said.contains("marmalade"), "the merged model: {said}");
    let base = ask("smollm2-135m-instruct");
    assert!(!base.contains("marmalade"), "the base model: {base}");

    // Bad input: a missing adapter, an output that is not .gguf.
    let missing = refused(
        home.path(),
        &[
            "merge".as_ref(),
            "--adapter".as_ref(),
            "/nonexistent".as_ref(),
            "--output".as_ref(),
            merged_path.as_ref(),
        ],
    );
    assert!(missing.contains("adapter_config.json"));
    refused(
        home.path(),
        &[
            "merge".as_ref(),
            "--adapter".as_ref(),
            output.join("adapter").as_ref(),
            "--output".as_ref(),
            "/tmp/merged.bin".as_ref(),
        ],
    );
}
