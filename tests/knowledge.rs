//! The knowledge base end to end through the `kefu` binary with the real default embedder
//! (multilingual-e5-small on ONNX Runtime), the in-process Qdrant store and SQLite: ingesting
//! the shared English and Chinese documents, retrieval quality on every Debian FAQ question in
//! both languages, identical results after a restart, a cited answer from the real default
//! chat model, answer quality measured through the answer pipeline, and clear errors for bad
//! input.

use kefu_tests::{assert_clear_failure, kefu_command, shared, stderr, stdout, test_home};
use std::path::Path;
use std::process::Output;

/// A fresh data directory that shares the already-fetched models.
fn fresh_home() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), tmp.path().join("models")).unwrap();
    tmp
}

fn run(home: &Path, args: &[&str]) -> Output {
    kefu_command()
        .env("KEFU_HOME", home)
        .env("HF_ENDPOINT", "")
        .env("KEFU_PACKAGE_INDEX", "http://127.0.0.1:9/simple")
        .args(args)
        .output()
        .expect("the kefu binary runs")
}

fn succeed(home: &Path, args: &[&str]) -> String {
    let output = run(home, args);
    assert!(
        output.status.success(),
        "kefu {args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output)
}

fn eval_json(home: &Path, qa: &str) -> serde_json::Value {
    let out = succeed(home, &["eval", "retrieval", "--qa", &shared(qa), "--json"]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `kefu eval retrieval --json` of question file `qa` on knowledge base `kb`.
fn eval_kb_json(home: &Path, qa: &Path, kb: &str) -> serde_json::Value {
    let qa = qa.to_str().unwrap();
    let out = succeed(
        home,
        &["eval", "retrieval", "--qa", qa, "--kb", kb, "--json"],
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Measured 2026-11-29 (see the issue note and docs/BENCHMARKS.md for the figures).
#[test]
fn ingest_evaluate_restart_and_ask_on_the_shared_knowledge_base() {
    let tmp = fresh_home();
    let home = tmp.path();
    let out = succeed(home, &["ingest", &shared("kb/en"), &shared("kb/zh")]);
    assert!(out.contains("0 failed"), "{out}");
    eprintln!("{out}");

    for (qa, language) in [("qa/en.jsonl", "en"), ("qa/zh.jsonl", "zh")] {
        let report = eval_json(home, qa);
        eprintln!("{language}: {report}");
        assert_eq!(report["questions"], 120, "{report}");
        assert_eq!(report["source_not_ingested"], 0, "{report}");
        for retriever in ["dense", "keyword", "fused"] {
            for key in ["recall@1", "recall@5", "recall@10", "mrr"] {
                assert!(
                    report[retriever][key].is_f64(),
                    "{retriever} {key}: {report}"
                );
            }
        }
        let fused = report["fused"]["recall@5"].as_f64().unwrap();
        assert!(fused >= 0.90, "{language} fused recall@5 {fused}");
        let dense = report["dense"]["recall@5"].as_f64().unwrap();
        assert!(dense >= 0.80, "{language} dense recall@5 {dense}");
    }

    // A restart (a new process on the same data directory) gives the same rankings.
    let before = eval_json(home, "qa/zh.jsonl");
    let again = succeed(home, &["ingest", &shared("kb/en"), &shared("kb/zh")]);
    assert!(
        again.contains("0 added, 0 updated, 70 unchanged"),
        "{again}"
    );
    assert_eq!(eval_json(home, "qa/zh.jsonl"), before);

    // The table form names every retriever and cut-off.
    let table = succeed(
        home,
        &[
            "eval",
            "retrieval",
            "--qa",
            &shared("qa/en.jsonl"),
            "--split",
            "test",
            "--k",
            "1,3",
        ],
    );
    assert!(table.contains("20 questions"), "{table}");
    for word in ["recall@1", "recall@3", "mrr", "dense", "keyword", "fused"] {
        assert!(table.contains(word), "{word}: {table}");
    }

    // A cited answer from the real default chat model.
    let answer = succeed(
        home,
        &[
            "ask",
            "Which Debian distribution (stable/testing/unstable) is better for me?",
            "--max-tokens",
            "48",
        ],
    );
    eprintln!("{answer}");
    let (reply, sources) = answer.split_once("Sources:").expect("a Sources section");
    assert!(!reply.trim().is_empty(), "{answer}");
    assert!(sources.contains("[1] "), "{answer}");
    assert!(
        sources.contains("kb/en/debian-faq/choosing.md"),
        "the chapter on choosing a distribution is cited: {answer}"
    );

    // Answer quality through the server's answer pipeline with the real default model: every
    // figure reported, every answer written with its scores.
    let answers_file = home.join("answers.jsonl");
    let report = succeed(
        home,
        &[
            "eval",
            "answers",
            "--qa",
            &shared("qa/en.jsonl"),
            "--split",
            "test",
            "--source",
            "debian-faq",
            "--limit",
            "3",
            "--max-tokens",
            "48",
            "--json",
            "--output",
            answers_file.to_str().unwrap(),
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(report.trim()).unwrap_or_else(|e| panic!("{e}: {report}"));
    eprintln!("answers: {report}");
    assert_eq!(report["answerable"]["questions"], 3, "{report}");
    assert_eq!(report["unanswerable"]["questions"], 0, "{report}");
    for key in [
        "f1",
        "fact_recall",
        "abstained",
        "source_cited",
        "median_seconds",
    ] {
        assert!(
            report["answerable"][key]
                .as_f64()
                .is_some_and(f64::is_finite),
            "{key}: {report}"
        );
    }
    let written = std::fs::read_to_string(&answers_file).unwrap();
    let lines: Vec<serde_json::Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{written}");
    for line in &lines {
        assert!(
            line["answer"].as_str().is_some_and(|a| !a.is_empty()),
            "{line}"
        );
        assert!(line["f1"].is_f64() && line["answerable"] == true, "{line}");
    }
    let table = succeed(
        home,
        &[
            "eval",
            "answers",
            "--qa",
            &shared("qa/zh.jsonl"),
            "--split",
            "test",
            "--limit",
            "1",
            "--max-tokens",
            "32",
        ],
    );
    for word in [
        "1 questions",
        "answerable",
        "unanswerable",
        "F1",
        "abstained",
        "s/answer",
    ] {
        assert!(table.contains(word), "{word}: {table}");
    }

    // Bad input to `kefu eval answers`: bad lines (named, or skipped on request), no reference
    // answers, a knowledge base that does not exist or is empty, a model that cannot load,
    // --limit 0, an unknown version.
    let answers_qa = home.join("answers-bad.jsonl");
    std::fs::write(
        &answers_qa,
        "{\"question\": \"What is Debian?\", \"answer\": \"An operating system.\"}\nnot json\n",
    )
    .unwrap();
    let answers_qa = answers_qa.to_str().unwrap();
    let bad_line = run(home, &["eval", "answers", "--qa", answers_qa]);
    assert_clear_failure(&bad_line, "line 2");
    let skipped = run(
        home,
        &[
            "eval",
            "answers",
            "--qa",
            answers_qa,
            "--on-bad-line",
            "skip",
            "--max-tokens",
            "8",
        ],
    );
    assert!(skipped.status.success(), "{}", stderr(&skipped));
    assert!(
        stderr(&skipped).contains("line 2 skipped"),
        "{}",
        stderr(&skipped)
    );
    assert!(
        stdout(&skipped).contains("1 bad lines skipped"),
        "{}",
        stdout(&skipped)
    );
    // `eval answers` on that file, bad lines skipped, with one more flag.
    let bad_answers = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "answers",
            "--qa",
            answers_qa,
            "--on-bad-line",
            "skip",
        ];
        args.extend_from_slice(extra);
        run(home, &args)
    };
    let no_answers = home.join("no-answers.jsonl");
    std::fs::write(&no_answers, "{\"question\": \"What is Debian?\"}\n").unwrap();
    let none = run(
        home,
        &["eval", "answers", "--qa", no_answers.to_str().unwrap()],
    );
    assert_clear_failure(&none, "no questions with an `answer`");
    let no_kb = bad_answers(&["--kb", "nope"]);
    assert_clear_failure(&no_kb, "there is no knowledge base `nope`");
    let broken = home.join("broken.gguf");
    std::fs::write(&broken, b"GGUF but not really a model").unwrap();
    let unloadable = bad_answers(&["--model", broken.to_str().unwrap()]);
    assert_clear_failure(&unloadable, "cannot load the model");
    let zero = run(
        home,
        &["eval", "answers", "--qa", answers_qa, "--limit", "0"],
    );
    assert_clear_failure(&zero, "--limit must be at least 1");
    let unknown = bad_answers(&["--version", "deadbeefdeadbeef"]);
    assert_clear_failure(&unknown, "no model version `deadbeefdeadbeef`");

    // Bad input: a missing question file, no usable records, a bad cut-off, an empty base.
    let missing = run(
        home,
        &["eval", "retrieval", "--qa", "/nonexistent/qa.jsonl"],
    );
    assert_clear_failure(&missing, "cannot read /nonexistent/qa.jsonl");
    let qa = home.join("broken.jsonl");
    std::fs::write(&qa, "{\"question\": \"no source\"}\n").unwrap();
    let none = run(home, &["eval", "retrieval", "--qa", qa.to_str().unwrap()]);
    assert_clear_failure(&none, "no questions with a `source_doc`");
    let bad_k = run(
        home,
        &[
            "eval",
            "retrieval",
            "--qa",
            &shared("qa/zh.jsonl"),
            "--k",
            "0",
        ],
    );
    assert_clear_failure(&bad_k, "--k takes cut-offs of 1 or more");
    let empty = run(home, &["ask", "Where is my order?", "--kb", "nothing-here"]);
    assert_clear_failure(&empty, "the knowledge base `nothing-here` is empty");
    let blank = run(home, &["ask", "   "]);
    assert_clear_failure(&blank, "the question is empty");
    let empty_answers = bad_answers(&["--kb", "nothing-here"]);
    assert_clear_failure(&empty_answers, "the knowledge base `nothing-here` is empty");
}

/// A FAQ spreadsheet's rows are found by their questions and cited by them; a PDF's passages
/// are cited by page; a Word document's by its headings; a spreadsheet without question and
/// answer columns, and a Word file that is not one, are those files' errors while the rest is
/// ingested.
#[test]
fn faq_spreadsheets_pdf_pages_and_word_documents_are_ingested_and_cited() {
    let tmp = fresh_home();
    let home = tmp.path();
    let docs = home.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("faq.csv"),
        "Question,Answer\n\
         How long does a refund take?,\"Refunds reach your card within five working days.\"\n\
         Do you ship to Norway?,\"Yes, in seven to ten working days.\"\n\
         Can I pay by invoice?,Business customers can pay by invoice within 14 days.\n",
    )
    .unwrap();
    std::fs::write(docs.join("prices.csv"), "product,price\nshoe,10\n").unwrap();
    // An Excel workbook written by openpyxl (rag/tests/fixtures/make_faq_xlsx.py).
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rag/tests/fixtures/faq.xlsx"),
        docs.join("faq-book.xlsx"),
    )
    .unwrap();
    let manual = kefu_rag::testing::pages_pdf(&[
        "The kettle heats one litre.",
        "Descale the kettle every month with citric acid.",
    ]);
    std::fs::write(docs.join("kettle.pdf"), manual).unwrap();
    // A Word document written by python-docx (rag/tests/fixtures/make_guide_docx.py), and a
    // ".docx" that is a renamed text file.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rag/tests/fixtures/guide.docx"),
        docs.join("guide.docx"),
    )
    .unwrap();
    std::fs::write(docs.join("notes.docx"), "just text, not a Word document").unwrap();
    let docs = docs.to_str().unwrap().to_string();
    let out = run(home, &["ingest", &docs, "--kb", "shop"]);
    let (said, errors) = (stdout(&out), stderr(&out));
    assert!(
        !out.status.success(),
        "a bad file makes the run fail: {said}"
    );
    assert!(said.contains("4 added"), "{said}{errors}");
    assert!(
        errors.contains("prices.csv") && errors.contains("`question` and an `answer`"),
        "{errors}"
    );
    assert!(
        errors.contains("notes.docx") && errors.contains("not a Word document"),
        "{errors}"
    );
    let qa = home.join("qa.jsonl");
    std::fs::write(
        &qa,
        "{\"question\": \"When will my refund arrive on my card?\", \"source_doc\": \"docs/faq.csv\"}\n\
         {\"question\": \"Do you deliver to Norway?\", \"source_doc\": \"docs/faq.csv\"}\n\
         {\"question\": \"How do I descale my kettle?\", \"source_doc\": \"docs/kettle.pdf\"}\n\
         {\"question\": \"如何退货？\", \"source_doc\": \"docs/faq-book.xlsx\"}\n\
         {\"question\": \"How soon must I report a damaged parcel?\", \"source_doc\": \"docs/guide.docx\"}\n",
    )
    .unwrap();
    let report = eval_kb_json(home, &qa, "shop");
    assert_eq!(report["fused"]["recall@1"], 1.0, "{report}");
    // A short answer and the sources it cites (after "Sources:").
    let ask = |question: &str| {
        let answer = succeed(
            home,
            &[
                "ask",
                question,
                "--kb",
                "shop",
                "--max-tokens",
                "24",
                "--answer-unrelated",
                "--min-support",
                "0",
            ],
        );
        let (_, sources) = answer.split_once("Sources:").expect("a Sources section");
        (sources.to_string(), answer.clone())
    };
    let (sources, answer) = ask("How do I descale my kettle?");
    assert!(sources.contains("Page 2"), "the page is cited: {answer}");
    let (sources, answer) = ask("Do you ship to Norway?");
    assert!(
        sources.contains("Do you ship to Norway?"),
        "the FAQ row is cited by its question: {answer}"
    );
    let (sources, answer) = ask("How soon must I report a damaged parcel?");
    assert!(
        sources.contains("Shop guide") && sources.contains("Damaged parcels"),
        "the Word document is cited by its title and heading: {answer}"
    );
}

#[test]
fn a_deleted_file_is_pruned_and_its_answers_go_with_it() {
    let tmp = fresh_home();
    let home = tmp.path();
    let docs = home.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("refunds.md"),
        "# Refunds\n\nRefunds are paid back to the original card within five working days.",
    )
    .unwrap();
    std::fs::write(
        docs.join("shipping.md"),
        "# Shipping\n\nParcels leave our warehouse in Lyon every weekday at noon.",
    )
    .unwrap();
    let docs = docs.to_str().unwrap().to_string();
    let out = succeed(home, &["ingest", &docs, "--kb", "shop"]);
    assert!(out.contains("2 added"), "{out}");
    std::fs::remove_file(Path::new(&docs).join("refunds.md")).unwrap();
    let kept = succeed(home, &["ingest", &docs, "--kb", "shop"]);
    assert!(
        kept.contains("0 removed"),
        "without --prune nothing goes: {kept}"
    );
    let pruned = succeed(home, &["ingest", &docs, "--kb", "shop", "--prune"]);
    assert!(pruned.contains("1 unchanged, 1 removed"), "{pruned}");
    let qa = home.join("qa.jsonl");
    std::fs::write(
        &qa,
        "{\"question\": \"When do parcels leave the warehouse?\", \"source_doc\": \"docs/shipping.md\"}\n",
    )
    .unwrap();
    let report = eval_kb_json(home, &qa, "shop");
    assert_eq!(report["fused"]["recall@1"], 1.0, "{report}");
    assert_eq!(report["dense"]["recall@1"], 1.0, "{report}");
}

#[test]
fn an_unreachable_qdrant_server_is_a_clear_error() {
    let tmp = fresh_home();
    let output = run(
        tmp.path(),
        &[
            "ingest",
            &shared("kb/en/abcd-guidelines/order-issue.md"),
            "--qdrant-url",
            "http://127.0.0.1:9",
        ],
    );
    assert_clear_failure(
        &output,
        "cannot reach the Qdrant server at http://127.0.0.1:9",
    );
}
