//! `kefu train` end to end: on the real default model (Qwen2.5-Coder-0.5B-Instruct) a few
//! LoRA steps on Debian FAQ question / answer pairs write a PEFT adapter, metrics and a
//! checkpoint, `--resume` carries on, DPO reports rewards and the base can be 4-bit, 8-bit or
//! f32; on the small model (SmolLM2-135M-Instruct, quick enough to memorize an answer) a recipe
//! runs CPT, SFT and DPO in order and merged models (GGUF and Hugging Face) answer as trained;
//! bad input is refused with a message and a non-zero exit.

use kefu_tests::{SMALL_MODEL, kefu_command, test_home};
use std::path::{Path, PathBuf};
use std::process::Command;

fn kefu(home: &Path) -> Command {
    let mut command = kefu_command();
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
    // Qwen2.5-Coder-0.5B: 24 layers, q and v, A and B.
    assert_eq!(tensors.len(), 24 * 2 * 2);
    let b = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
    let moved: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(moved > 0.0, "B left zero: nothing was learned");
    let metrics = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    // The base model's evaluation (step 0), then the two steps.
    assert_eq!(metrics.lines().count(), 3);
    assert!(metrics.lines().next().unwrap().contains("\"eval_loss\""));

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
    let first: serde_json::Value = serde_json::from_str(metrics.lines().nth(1).unwrap()).unwrap();
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

/// `kefu train kto` on the default model with the shared preference file's answers, each
/// labelled on its own (chosen: good, rejected: bad): the run reports the KTO figures and
/// writes an adapter; the first loss is 1/2 (policy = reference, up to the kernels' rounding);
/// a line without a label and β = 0 are refused.
#[test]
fn kto_on_the_default_model_reports_rewards() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/pairs/en.jsonl");
    let text = std::fs::read_to_string(source).unwrap();
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| l.len() < 1200).take(5) {
        let pair: serde_json::Value = serde_json::from_str(line).unwrap();
        for (answer, label) in [("chosen", true), ("rejected", false)] {
            let mut example = pair.clone();
            let object = example.as_object_mut().unwrap();
            object.remove("chosen");
            object.remove("rejected");
            object.insert("completion".into(), pair[answer].clone());
            object.insert("label".into(), label.into());
            lines.push(example.to_string());
        }
    }
    let data = home.path().join("kto.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let output = home.path().join("kto");
    let run = kefu(home.path())
        .args(["train", "kto", "--data"])
        .arg(&data)
        .arg("--output")
        .arg(&output)
        .args(["--batch", "2", "--max-len", "256", "--rank", "4"])
        .args([
            "--targets",
            "q,v",
            "--max-steps",
            "2",
            "--eval-fraction",
            "0.5",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("good") && err.contains("bad answers"), "{err}");
    assert!(!err.contains(" and 0 eval examples"), "{err}");
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        said.contains("2 steps") && said.contains("eval desirable_reward"),
        "{said}"
    );
    assert!(output.join("adapter/adapter_model.safetensors").exists());
    let saved = std::fs::read_to_string(output.join("recipe.toml")).unwrap();
    assert!(
        saved.contains("[kto]") && saved.contains("beta = 0.1"),
        "{saved}"
    );
    let metrics = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().nth(1).unwrap()).unwrap();
    // The reference pass batches examples in file order, the steps by length, and the quantized
    // kernels round a little differently per batch shape: measured 0.5033 (a log-ratio of
    // −0.13 nats summed over a long answer, through β = 0.1).
    let loss = first["loss"].as_f64().unwrap();
    assert!((loss - 0.5).abs() < 0.02, "{first}");

    let broken = home.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        "{\"prompt\": \"q\", \"completion\": \"a\", \"label\": true}\n{\"prompt\": \"q\", \"completion\": \"b\"}\n",
    )
    .unwrap();
    let stage = |extra: &[&std::ffi::OsStr], file: &Path| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["train".as_ref(), "kto".as_ref()];
        args.extend_from_slice(extra);
        args.extend(["--data".as_ref(), file.as_os_str()]);
        args.extend(["--output".as_ref(), output.as_os_str()]);
        refused(home.path(), &args)
    };
    let failed = stage(&["--on-bad-line".as_ref(), "fail".as_ref()], &broken);
    assert!(
        failed.contains("line 2") && failed.contains("label"),
        "{failed}"
    );
    let bad_beta = stage(&["--beta".as_ref(), "0".as_ref()], &data);
    assert!(bad_beta.contains("beta"), "{bad_beta}");
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
            "--model",
            SMALL_MODEL,
            "--epochs",
            "40",
            "--batch",
            "1",
            "--lr",
            "2e-3",
            "--rank",
            "8",
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
    let base = ask(SMALL_MODEL);
    assert!(!base.contains("marmalade"), "the base model: {base}");

    // The same merge as Hugging Face weights (a folder): it loads and answers the same way.
    let hf = home.path().join("hf");
    let exported = kefu(home.path())
        .args(["merge", "--adapter"])
        .arg(output.join("adapter"))
        .arg("--output")
        .arg(&hf)
        .output()
        .unwrap();
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(hf.join(file).exists(), "{file}");
    }
    let said = ask(hf.to_str().unwrap());
    assert!(
        said.contains("marmalade"),
        "the Hugging Face export: {said}"
    );

    // Bad input: a missing adapter, an output that is an existing file but not .gguf.
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
            data.as_ref(),
        ],
    );
    assert!(data.exists(), "the refused output is left alone");
}

/// A recipe with all three stages: CPT on knowledge-base pages, SFT on Debian FAQ answers and
/// DPO on preference pairs, each starting from the model the previous one merged; the settings
/// each stage used are saved beside it; bad recipes are refused before any model loads.
#[test]
fn a_recipe_runs_cpt_sft_and_dpo_in_order() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    let docs = home.path().join("docs");
    std::fs::create_dir_all(docs.join("nested")).unwrap();
    for (name, to) in [
        ("order-issue.md", "a.md"),
        ("shipping-issue.md", "nested/b.md"),
    ] {
        std::fs::copy(
            shared.join("kb/en/abcd-guidelines").join(name),
            docs.join(to),
        )
        .unwrap();
    }
    std::fs::write(docs.join("notes.bin"), [0u8, 1, 2]).unwrap();
    let faq = debian_faq(home.path(), 8);
    let pairs_source = std::fs::read_to_string(shared.join("pairs/en.jsonl")).unwrap();
    let pairs = home.path().join("pairs.jsonl");
    let few: Vec<&str> = pairs_source
        .lines()
        .filter(|l| l.contains("bitext"))
        .take(6)
        .collect();
    std::fs::write(&pairs, few.join("\n")).unwrap();
    let recipe = home.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"
model = "smollm2-135m-instruct"
seed = 3
[lora]
rank = 4
alpha = 8.0
dropout = 0.05
targets = ["q", "v"]
[cpt]
data = "{}"
max_len = 64
max_steps = 2
batch = 2
eval_fraction = 0.2
eval_limit = 4
lr = 1e-3
[sft]
data = "{}"
max_len = 128
max_steps = 2
batch = 2
eval_fraction = 0.25
[dpo]
data = "{}"
max_len = 128
max_steps = 1
batch = 2
eval_fraction = 0.3
beta = 0.2
"#,
            docs.display(),
            faq.display(),
            pairs.display()
        ),
    )
    .unwrap();
    let output = home.path().join("out");
    let run = kefu(home.path())
        .args(["train", "run", "--recipe"])
        .arg(&recipe)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("2 documents"), "{err}");
    assert!(said.contains("eval perplexity"), "{said}");
    assert!(said.contains("eval reward_accuracy"), "{said}");
    for stage in ["cpt", "sft", "dpo"] {
        let dir = output.join(stage);
        assert!(dir.join("model.gguf").exists(), "{stage}");
        assert!(dir.join("adapter/adapter_config.json").exists(), "{stage}");
        let saved = std::fs::read_to_string(dir.join("recipe.toml")).unwrap();
        assert!(saved.contains(&format!("[{stage}]")), "{saved}");
        assert!(saved.contains("dropout = 0.05"), "{saved}");
    }
    // Each stage started from the previous one's merged model.
    let sft_recipe = std::fs::read_to_string(output.join("sft/recipe.toml")).unwrap();
    assert!(sft_recipe.contains("cpt/model.gguf"), "{sft_recipe}");
    let dpo_recipe = std::fs::read_to_string(output.join("dpo/recipe.toml")).unwrap();
    assert!(dpo_recipe.contains("sft/model.gguf") && dpo_recipe.contains("beta = 0.2"));

    // A stage from the same recipe, with a flag overriding it.
    let single = home.path().join("single");
    let sft = kefu(home.path())
        .args(["train", "sft", "--recipe"])
        .arg(&recipe)
        .args(["--max-steps", "1", "--output"])
        .arg(&single)
        .output()
        .unwrap();
    assert!(
        sft.status.success(),
        "{}",
        String::from_utf8_lossy(&sft.stderr)
    );
    let saved = std::fs::read_to_string(single.join("recipe.toml")).unwrap();
    assert!(
        saved.contains("max_steps = 1") && saved.contains("rank = 4"),
        "{saved}"
    );

    // Bad recipes and settings: refused with their reason, before any model is loaded.
    let write = |name: &str, text: &str| {
        let path = home.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let typo = write("typo.toml", "[sft]\ndata = \"x\"\nlearning_rate = 0.1\n");
    let nothing = write("empty.toml", "model = \"smollm2-135m-instruct\"\n");
    let empty_docs = home.path().join("no-docs");
    std::fs::create_dir_all(&empty_docs).unwrap();
    let fresh = home.path().join("fresh");
    for (args, needle) in [
        (
            vec!["train", "run", "--recipe", typo.to_str().unwrap()],
            "learning_rate",
        ),
        (
            vec!["train", "sft", "--recipe", typo.to_str().unwrap()],
            "learning_rate",
        ),
        (
            vec!["train", "run", "--recipe", nothing.to_str().unwrap()],
            "no stage",
        ),
        (
            vec!["train", "sft", "--recipe", nothing.to_str().unwrap()],
            "--data",
        ),
        (
            vec![
                "train",
                "sft",
                "--beta",
                "0.1",
                "--data",
                faq.to_str().unwrap(),
            ],
            "DPO setting",
        ),
        (
            vec![
                "train",
                "cpt",
                "--split",
                "train",
                "--data",
                docs.to_str().unwrap(),
            ],
            "split",
        ),
        (
            vec!["train", "cpt", "--data", empty_docs.to_str().unwrap()],
            "no readable documents",
        ),
        (
            vec![
                "train",
                "sft",
                "--dropout",
                "1.5",
                "--data",
                faq.to_str().unwrap(),
            ],
            "dropout",
        ),
        (
            vec!["train", "run", "--recipe", "/nonexistent.toml"],
            "nonexistent.toml",
        ),
    ] {
        let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        args.extend(["--output".as_ref(), fresh.as_os_str()]);
        let started = std::time::Instant::now();
        let message = refused(home.path(), &args);
        assert!(message.contains(needle), "{args:?}: {message}");
        assert!(!fresh.join("adapter").exists());
        eprintln!("{args:?} refused in {:?}", started.elapsed());
    }
}

/// QLoRA: the same first step on a 4-bit, a Q8_0 and an f32 base gives nearly the same loss.
#[test]
fn the_base_can_be_held_in_4_bit_8_bit_or_f32() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let data = debian_faq(home.path(), 4);
    let mut losses = Vec::new();
    for weights in ["q4", "q8_0", "f32"] {
        let output = home.path().join(weights);
        let out = kefu(home.path())
            .args(["train", "sft", "--data"])
            .arg(&data)
            .arg("--output")
            .arg(&output)
            .args([
                "--base-weights",
                weights,
                "--max-steps",
                "1",
                "--batch",
                "4",
            ])
            .args([
                "--eval-fraction",
                "0",
                "--max-len",
                "128",
                "--targets",
                "q,v",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{weights}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let metrics = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
        losses.push(first["loss"].as_f64().unwrap());
    }
    eprintln!("first-step loss on q4 / q8_0 / f32 bases: {losses:?}");
    let f32_loss = losses[2];
    for loss in &losses {
        assert!((loss - f32_loss).abs() < 0.05 * f32_loss, "{losses:?}");
    }
    let bad = refused(
        home.path(),
        &[
            "train".as_ref(),
            "sft".as_ref(),
            "--base-weights".as_ref(),
            "q2".as_ref(),
            "--data".as_ref(),
            data.as_ref(),
            "--output".as_ref(),
            home.path().join("x").as_ref(),
        ],
    );
    assert!(bad.contains("q2"), "{bad}");
}
