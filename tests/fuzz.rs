//! Mutation fuzzing of every reader of untrusted bytes: the document parsers (Markdown, HTML,
//! text, PDF), the GGUF reader and model loader, the e5 file reader, the training-data readers
//! (SFT examples, preference pairs) and the recipe reader. No coverage-guided fuzzer runs on
//! this stable toolchain (cargo-fuzz and afl need nightly's sanitizer flags), so these are
//! property tests: each target's seeds are real files (the shared FAQ, a tiny real-architecture
//! model, the real e5 file, the trainer's own shapes), mutated many times over — bit flips,
//! boundary integers written over length and count fields, truncations, duplications,
//! splices, inserted markup — and every input must come back as a value or an error: no
//! panic, no abort, each input within a time bound, the process's memory bounded. A failing
//! input is written to `target/fuzz-failures/` for reproduction.
//!
//! `KEFU_FUZZ_SECONDS` (default 8 per target) makes the pass longer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{Architecture, LoadOptions, LoadedModel};
use kefu_rag::parse::{Format, parse_bytes};
use kefu_tests::{shared_path, test_home};

/// A small, seeded generator (the same inputs on every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Fragments that matter to the readers: markup, JSON and TOML punctuation, escapes.
const TOKENS: &[&[u8]] = &[
    b"<",
    b">",
    b"</",
    b"<div>",
    b"<h1>",
    b"<script>",
    b"&",
    b"&#x",
    b";",
    b"&amp;",
    b"# ",
    b"```",
    b"[",
    b"](",
    b"\n",
    b"\r\n",
    b"{",
    b"}",
    b"\"",
    b"\\",
    b":",
    b",",
    b"\xff",
    b"\x00",
    b"\xe4\xb8\xad",
    b"obj",
    b"endobj",
    b"stream",
    b"xref",
    b"<<",
    b">>",
    b"=",
    b"[lora]",
    b"[sft]",
    b"1e308",
    b"-1",
    b"NaN",
];

/// One mutation of `seed` (another seed may be spliced in).
fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = [0u8, 0xff, 0x7f, 0x80, b'0'][rng.below(5)];
            }
            // A boundary integer over what may be a length, a count or an offset.
            2 if len >= 8 => {
                let at = rng.below(len - 7);
                let value: u64 = [
                    0,
                    1,
                    u64::MAX,
                    u32::MAX as u64,
                    1 << 31,
                    1 << 40,
                    0x7fff_ffff,
                ][rng.below(7)];
                let width = [4usize, 8][rng.below(2)];
                data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            3 => data.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(256)).min(len);
                let piece = data[start..end].to_vec();
                let at = rng.below(len);
                for _ in 0..1 + rng.below(8) {
                    data.splice(at..at, piece.iter().copied());
                }
            }
            5 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                let times = if rng.below(4) == 0 {
                    1 + rng.below(2000)
                } else {
                    1
                };
                for _ in 0..times {
                    data.splice(at..at, token.iter().copied());
                }
            }
            6 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                data.drain(start..end);
            }
            _ => {
                let at = rng.below(len + 1);
                let random: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                data.splice(at..at, random);
            }
        }
    }
    data
}

/// Panics inside the PDF libraries are expected (the parser turns them into errors); only
/// the others are printed.
fn quiet_pdf_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or_default();
            if !(file.contains("pdf-extract") || file.contains("lopdf")) {
                default(info);
            }
        }));
    });
}

fn budget() -> Duration {
    let seconds = std::env::var("KEFU_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    Duration::from_secs_f64(seconds)
}

/// The process's peak resident memory (KiB).
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `target` on the seeds and their mutations for the time budget: every input must
/// return (any value or error) without a panic, within `per_input`. Returns the inputs tried.
fn fuzz(
    name: &str,
    seeds: &[Vec<u8>],
    per_input: Duration,
    mut target: impl FnMut(&[u8]),
) -> usize {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let mut rng = Rng(0x5eed ^ name.len() as u64);
    let started = Instant::now();
    let mut tried = 0;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < budget() || tried < seeds.len() {
        let input = if tried < seeds.len() {
            seeds[tried].clone()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            let other = &seeds[rng.below(seeds.len())];
            mutate(seed, other, &mut rng)
        };
        let one = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        let took = one.elapsed();
        slowest = slowest.max(took);
        if outcome.is_err() || took > per_input {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{name}-{tried}.bin"));
            let _ = std::fs::write(&file, &input);
            panic!(
                "{name}: input {tried} ({} bytes) {} — kept as {}",
                input.len(),
                if outcome.is_err() {
                    "panicked".to_string()
                } else {
                    format!("took {took:?}")
                },
                file.display()
            );
        }
        tried += 1;
    }
    eprintln!(
        "{name}: {tried} inputs in {:.1} s, slowest {slowest:?}, peak memory {} MiB",
        started.elapsed().as_secs_f64(),
        peak_kib() / 1024
    );
    tried
}

fn faq_files(count: usize) -> Vec<Vec<u8>> {
    let dir = shared_path("kb/en/debian-faq");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .filter(|b| b.len() < 20_000)
        .take(count)
        .collect();
    seeds.push(std::fs::read(shared_path("kb/zh/debian-faq/basic-defs.md")).unwrap_or_default());
    seeds.retain(|s| !s.is_empty());
    seeds
}

#[test]
fn document_parsers_survive_mutated_documents() {
    let markdown = faq_files(4);
    fuzz("markdown", &markdown, Duration::from_secs(2), |bytes| {
        let _ = parse_bytes(bytes, Format::Markdown, "fuzz");
    });
    let html: Vec<Vec<u8>> = markdown
        .iter()
        .map(|md| {
            let text = String::from_utf8_lossy(md).replace('&', "&amp;").replace('<', "&lt;");
            format!(
                "<html><head><title>FAQ &amp; more</title><style>p{{}}</style></head><body>\
                 <h1>FAQ</h1><div><p>{}</p><ul><li>one</li><li>two &#x4e2d;</li></ul>\
                 <table><tr><td>a</td><th>b</th></tr></table><script>x()</script></div></body></html>",
                text.replace("\n\n", "</p><p>")
            )
            .into_bytes()
        })
        .collect();
    fuzz("html", &html, Duration::from_secs(2), |bytes| {
        let _ = parse_bytes(bytes, Format::Html, "fuzz");
    });
    fuzz("text", &markdown, Duration::from_secs(2), |bytes| {
        let _ = parse_bytes(bytes, Format::Text, "fuzz");
    });
    let csv = vec![
        b"question,answer\n\"How long, exactly?\",\"30 days\"\"\"\nIs it free?,Yes.\n".to_vec(),
        "问题,答案\n怎么退货？,三十天内。\n".as_bytes().to_vec(),
    ];
    fuzz("csv", &csv, Duration::from_secs(1), |bytes| {
        let _ = parse_bytes(bytes, Format::Csv, "fuzz");
    });
    // A workbook written by openpyxl: the zip reader and the sheet's XML under mutation.
    let xlsx = vec![
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../rag/tests/fixtures/faq.xlsx"))
            .unwrap(),
    ];
    fuzz("xlsx", &xlsx, Duration::from_secs(2), |bytes| {
        let _ = parse_bytes(bytes, Format::Xlsx, "fuzz");
    });
    // A Word document written by python-docx: its document and styles parts under mutation.
    let docx = vec![
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../rag/tests/fixtures/guide.docx"),
        )
        .unwrap(),
    ];
    fuzz("docx", &docx, Duration::from_secs(2), |bytes| {
        let _ = parse_bytes(bytes, Format::Docx, "fuzz");
    });
    quiet_pdf_panics();
    let pdf = vec![kefu_rag::testing::one_page_pdf(
        "Parcels can be returned within 30 days.",
    )];
    fuzz("pdf", &pdf, Duration::from_secs(5), |bytes| {
        let _ = parse_bytes(bytes, Format::Pdf, "fuzz");
    });
    // A real PDF parses to its text, so the seed exercises the whole path.
    let parsed = parse_bytes(&pdf[0], Format::Pdf, "fuzz").unwrap();
    assert!(parsed.sections[0].text.contains("30 days"), "{parsed:?}");
}

#[test]
fn the_model_reader_survives_mutated_gguf_files() {
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<Vec<u8>> = Architecture::ALL
        .into_iter()
        .map(|architecture| {
            let path = write_tiny_gguf(dir.path(), &TinySpec::new(architecture));
            std::fs::read(path).unwrap()
        })
        .collect();
    let file = dir.path().join("fuzzed.gguf");
    let before = peak_kib();
    fuzz("gguf", &seeds, Duration::from_secs(5), |bytes| {
        std::fs::write(&file, bytes).unwrap();
        if let Ok(gguf) = kefu_model::gguf::GgufFile::open(&file) {
            let _ = gguf.has_slow_weights();
        }
        let _ = LoadedModel::load(&file, &LoadOptions::default());
    });
    assert!(
        peak_kib() < before + 2 * 1024 * 1024,
        "memory grew without bound"
    );
}

#[test]
fn the_e5_reader_survives_mutated_files() {
    let folder = test_home().join("models/multilingual-e5-small");
    let source = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::File::open(p)
                .and_then(|mut f| {
                    let mut magic = [0u8; 4];
                    std::io::Read::read_exact(&mut f, &mut magic).map(|_| magic)
                })
                .is_ok_and(|m| &m == b"E5S1")
        })
        .unwrap_or_else(|| panic!("no E5S1 file in {}", folder.display()));
    let whole = std::fs::read(&source).unwrap();
    kefu_rag::e5::E5File::parse(&whole).expect("the real file parses");
    // The header, the vocabulary and the normalization map are where the lengths and counts
    // live: the mutations go to the file's first 64 KiB, the rest follows unchanged.
    let head = whole.len().min(64 << 10);
    let seeds = vec![whole[..head].to_vec()];
    let before = peak_kib();
    let mut input = Vec::with_capacity(whole.len() + 4096);
    fuzz("e5", &seeds, Duration::from_secs(5), |mutated| {
        input.clear();
        input.extend_from_slice(mutated);
        input.extend_from_slice(&whole[head..]);
        if let Ok(file) = kefu_rag::e5::E5File::parse(&input) {
            let _ = kefu_rag::e5::tokenizer_json(&file);
        }
    });
    assert!(
        peak_kib() < before + 2 * 1024 * 1024,
        "memory grew without bound"
    );
}

#[test]
fn training_data_and_recipe_readers_survive_mutated_text() {
    let sft: Vec<Vec<u8>> = [
        r#"{"instruction": "How do I return a parcel?", "input": "", "output": "Within 30 days."}"#,
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#,
        r#"{"conversations": [{"from": "human", "value": "退货要多久？"}, {"from": "gpt", "value": "三十天。"}]}"#,
        r#"{"question": "Is Debian free?", "answer": "Yes."}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let pairs: Vec<Vec<u8>> = [
        r#"{"prompt": "Is Debian free?", "chosen": "Yes.", "rejected": "No."}"#,
        r#"{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}], "rejected": [{"role": "assistant", "content": "Go away"}]}"#,
        r#"{"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "Hello"}, "rejected": {"from": "gpt", "value": "No"}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    fuzz("sft", &sft, Duration::from_secs(2), |bytes| {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
            let _ = kefu_trainer::data::parse_example(&value);
        }
        std::fs::write(&file, bytes).unwrap();
        let _ = kefu_trainer::data::read_jsonl(&file, kefu_trainer::data::OnBadLine::Skip);
    });
    fuzz("pairs", &pairs, Duration::from_secs(2), |bytes| {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
            let _ = kefu_trainer::dpo::parse_preference(&value);
        }
        std::fs::write(&file, bytes).unwrap();
        let _ = kefu_trainer::dpo::read_pairs(&file, kefu_trainer::data::OnBadLine::Skip);
    });
    let recipes: Vec<Vec<u8>> = [
        "checkpoint_layers = true\nseed = 7\n[lora]\nrank = 16\nalpha = 32.0\ndropout = 0.05\ntargets = [\"q_proj\", \"v_proj\"]\n[sft]\nepochs = 2\nlr = 2e-4\nbatch = 1\naccum = 2\non_bad_line = \"skip\"\n",
        "[cpt]\nepochs = 1\nmax_len = 256\n[sft]\nepochs = 1\neval_fraction = 0.1\n[dpo]\nbeta = 0.1\nepochs = 1\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for recipe in &recipes {
        let text = std::str::from_utf8(recipe).unwrap();
        kefu_trainer::recipe::Recipe::parse(text, "seed").expect("the seed recipes are valid");
    }
    fuzz("recipe", &recipes, Duration::from_secs(2), |bytes| {
        let _ = kefu_trainer::recipe::Recipe::parse(&String::from_utf8_lossy(bytes), "fuzz");
    });
}
