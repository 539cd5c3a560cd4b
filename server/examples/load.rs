//! Load for `benches/serve_load.sh`: C concurrent conversations against a running `kefu
//! serve`, each asking Q questions one after another in one conversation over the public API
//! (SSE). Prints one JSON object: requests, errors, time to first token and to the complete
//! answer (p50 / p99), gaps between streamed pieces (p50 / p99), aggregate tokens/s, and the
//! prompt tokens the model ran per turn (the rest came from the prefix cache).
//!
//! cargo run --release -p server --example load -- BASE_URL CONCURRENCY QUESTIONS_EACH [QA_FILE]
//!
//! With QA_FILE (JSON lines with a `question`), conversation c asks that file's questions
//! c·Q … c·Q + Q − 1 (every conversation different ones); without it, six built-in ones.

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

#[derive(Default)]
struct Outcome {
    ok: bool,
    first_token_ms: Option<f64>,
    complete_ms: Option<f64>,
    tokens: usize,
    /// Milliseconds between consecutive streamed pieces.
    gaps_ms: Vec<f64>,
    /// The turn in its conversation (0: the first question).
    turn: usize,
    /// `done`'s usage: prompt tokens, and those the prefix cache supplied.
    prompt_tokens: u64,
    cached_tokens: u64,
}

fn failed() -> Outcome {
    Outcome::default()
}

fn converse(base: &str, questions: usize, offset: usize, pool: &[String]) -> Vec<Outcome> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut outcomes = Vec::new();
    let Ok(mut created) = agent
        .post(&format!("{base}/api/conversations"))
        .send("{}".as_bytes())
    else {
        return vec![failed()];
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
        return vec![failed()];
    };
    for q in 0..questions {
        let question = pool[(offset + q) % pool.len()].as_str();
        let started = Instant::now();
        let response = agent
            .post(&format!("{base}/api/conversations/{id}/messages"))
            .header("content-type", "application/json")
            .header("authorization", &format!("Bearer {token}"))
            .send(json!({"content": question}).to_string().as_bytes());
        let Ok(response) = response else {
            outcomes.push(failed());
            continue;
        };
        if response.status().as_u16() != 200 {
            outcomes.push(failed());
            continue;
        }
        let mut outcome = Outcome {
            turn: q,
            ..failed()
        };
        let mut last_piece: Option<Instant> = None;
        let mut event = String::new();
        for line in BufReader::new(response.into_body().into_reader()).lines() {
            let Ok(line) = line else { break };
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data:") {
                match event.as_str() {
                    "token" => {
                        let now = Instant::now();
                        outcome.tokens += 1;
                        if let Some(last) = last_piece {
                            outcome.gaps_ms.push((now - last).as_secs_f64() * 1000.0);
                        }
                        last_piece = Some(now);
                        outcome
                            .first_token_ms
                            .get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
                    }
                    "done" => {
                        let done: Value = serde_json::from_str(data.trim()).unwrap_or_default();
                        outcome.ok = true;
                        outcome.complete_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                        outcome.prompt_tokens =
                            done["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
                        outcome.cached_tokens =
                            done["usage"]["cached_tokens"].as_u64().unwrap_or(0);
                    }
                    _ => {}
                }
            }
        }
        outcomes.push(outcome);
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
    let (base, concurrency, questions, file) = match args.as_slice() {
        [base, concurrency, questions] => (base, concurrency, questions, None),
        [base, concurrency, questions, file] => (base, concurrency, questions, Some(file)),
        _ => return Err("usage: load BASE_URL CONCURRENCY QUESTIONS_EACH [QA_FILE]".into()),
    };
    let concurrency: usize = concurrency.parse()?;
    let questions: usize = questions.parse()?;
    let pool: Vec<String> = match file {
        Some(file) => std::fs::read_to_string(file)?
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|record| record["question"].as_str().map(str::to_string))
            .collect(),
        None => QUESTIONS.iter().map(|q| q.to_string()).collect(),
    };
    if pool.is_empty() {
        return Err("no questions to ask".into());
    }
    let pool = &pool;
    let started = Instant::now();
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|c| scope.spawn(move || converse(base, questions, c * questions, pool)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let sorted = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values
    };
    let ttft = sorted(outcomes.iter().filter_map(|o| o.first_token_ms).collect());
    let complete = sorted(outcomes.iter().filter_map(|o| o.complete_ms).collect());
    let gaps = sorted(outcomes.iter().flat_map(|o| o.gaps_ms.clone()).collect());
    let tokens: usize = outcomes.iter().map(|o| o.tokens).sum();
    let errors = outcomes.iter().filter(|o| !o.ok).count();
    // Mean prompt tokens the model ran, and mean prompt tokens, per turn.
    let turns = outcomes.iter().map(|o| o.turn + 1).max().unwrap_or(0);
    let per_turn: Vec<Value> = (0..turns)
        .map(|t| {
            let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok && o.turn == t).collect();
            let n = of.len().max(1) as f64;
            let prompt = of.iter().map(|o| o.prompt_tokens as f64).sum::<f64>() / n;
            let cached = of.iter().map(|o| o.cached_tokens as f64).sum::<f64>() / n;
            json!({"turn": t + 1, "answers": of.len(), "prompt_tokens": prompt.round(),
                   "prefilled_tokens": (prompt - cached).round()})
        })
        .collect();
    println!(
        "{}",
        json!({
            "concurrency": concurrency,
            "requests": outcomes.len(),
            "errors": errors,
            "seconds": seconds,
            "ttft_p50_ms": percentile(&ttft, 50.0),
            "ttft_p99_ms": percentile(&ttft, 99.0),
            "complete_p50_ms": percentile(&complete, 50.0),
            "complete_p99_ms": percentile(&complete, 99.0),
            "gap_p50_ms": percentile(&gaps, 50.0),
            "gap_p99_ms": percentile(&gaps, 99.0),
            "per_turn": per_turn,
            "tokens": tokens,
            "tokens_per_second": tokens as f64 / seconds,
        })
    );
    Ok(())
}
