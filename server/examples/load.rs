//! Load for `benches/serve_load.sh`: C concurrent conversations against a running `kefu
//! serve`, each asking Q questions one after another over the public API (SSE). Prints one
//! JSON object: requests, errors, time to first token p50 / p99, aggregate tokens/s.
//!
//! cargo run --release -p server --example load -- BASE_URL CONCURRENCY QUESTIONS_EACH

use std::io::{BufRead, BufReader};
use std::time::Instant;

use serde_json::{Value, json};

const QUESTIONS: &[&str] = &[
    "Which Debian distribution (stable/testing/unstable) is better for me?",
    "How do I keep my Debian system up to date?",
    "What is the Debian FAQ?",
    "How can I install a package that is not in the archive?",
    "如何使 Debian 系统保持最新？",
    "What does the stable directory contain?",
];

struct Outcome {
    ok: bool,
    first_token_ms: Option<f64>,
    tokens: usize,
}

fn converse(base: &str, questions: usize, offset: usize) -> Vec<Outcome> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut outcomes = Vec::new();
    let Ok(mut created) = agent
        .post(&format!("{base}/api/conversations"))
        .send("{}".as_bytes())
    else {
        return vec![Outcome {
            ok: false,
            first_token_ms: None,
            tokens: 0,
        }];
    };
    let conversation: Value = created
        .body_mut()
        .read_to_string()
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    let (Some(id), Some(token)) = (
        conversation["id"].as_str(),
        conversation["customer_token"].as_str(),
    ) else {
        return vec![Outcome {
            ok: false,
            first_token_ms: None,
            tokens: 0,
        }];
    };
    for q in 0..questions {
        let question = QUESTIONS[(offset + q) % QUESTIONS.len()];
        let started = Instant::now();
        let response = agent
            .post(&format!("{base}/api/conversations/{id}/messages"))
            .header("content-type", "application/json")
            .header("authorization", &format!("Bearer {token}"))
            .send(json!({"content": question}).to_string().as_bytes());
        let Ok(response) = response else {
            outcomes.push(Outcome {
                ok: false,
                first_token_ms: None,
                tokens: 0,
            });
            continue;
        };
        if response.status().as_u16() != 200 {
            outcomes.push(Outcome {
                ok: false,
                first_token_ms: None,
                tokens: 0,
            });
            continue;
        }
        let mut first = None;
        let mut tokens = 0;
        let mut done = false;
        let mut event = String::new();
        for line in BufReader::new(response.into_body().into_reader()).lines() {
            let Ok(line) = line else { break };
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
            } else if line.starts_with("data:") {
                match event.as_str() {
                    "token" => {
                        tokens += 1;
                        first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
                    }
                    "done" => done = true,
                    _ => {}
                }
            }
        }
        outcomes.push(Outcome {
            ok: done,
            first_token_ms: first,
            tokens,
        });
    }
    outcomes
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, concurrency, questions] = args.as_slice() else {
        return Err("usage: load BASE_URL CONCURRENCY QUESTIONS_EACH".into());
    };
    let concurrency: usize = concurrency.parse()?;
    let questions: usize = questions.parse()?;
    let started = Instant::now();
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|c| scope.spawn(move || converse(base, questions, c)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut ttft: Vec<f64> = outcomes.iter().filter_map(|o| o.first_token_ms).collect();
    ttft.sort_by(f64::total_cmp);
    let tokens: usize = outcomes.iter().map(|o| o.tokens).sum();
    let errors = outcomes.iter().filter(|o| !o.ok).count();
    println!(
        "{}",
        json!({
            "concurrency": concurrency,
            "requests": outcomes.len(),
            "errors": errors,
            "seconds": seconds,
            "ttft_p50_ms": percentile(&ttft, 50.0),
            "ttft_p99_ms": percentile(&ttft, 99.0),
            "tokens": tokens,
            "tokens_per_second": tokens as f64 / seconds,
        })
    );
    Ok(())
}
