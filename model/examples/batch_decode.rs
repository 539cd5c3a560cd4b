//! Decoding throughput with several sequences per forward pass against one sequence at a time,
//! on the same model and prompts: prefill excluded, `STEPS` tokens per sequence.
//!
//!   cargo run --release -p model --example batch_decode -- MODEL.gguf [STEPS]
//!
//! Prints one JSON line per batch size: tokens/s decoding the batch together and one by one.

use std::time::Instant;

use kefu_model::generate::GenerationParams;
use kefu_model::{ChatMessage, LoadOptions, LoadedModel, Role};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: batch_decode MODEL.gguf [STEPS]")?;
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(32);
    let model = LoadedModel::load(std::path::Path::new(&path), &LoadOptions::default())?;
    let params = GenerationParams {
        max_tokens: steps,
        ignore_eos: true,
        ..GenerationParams::default()
    };
    let questions = [
        "How do I keep my Debian system up to date?",
        "Which Debian distribution is better for me?",
        "What is a Debian package?",
        "How can I install a package that is not in the archive?",
    ];
    for batch in [1usize, 4, 8, 16] {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|i| {
                model.chat_prompt(&[ChatMessage::new(
                    Role::User,
                    format!("{} (#{i})", questions[i % questions.len()]),
                )])
            })
            .collect::<Result<_, _>>()?;
        // One by one: each sequence decodes alone (prefill not timed).
        let mut alone_seconds = 0f64;
        for prompt in &prompts {
            let mut sequence = model.start_sequence(prompt, &params)?;
            let started = Instant::now();
            while sequence.advance(|_| true)? {
                model.step_batch(&mut [&mut sequence])?;
            }
            alone_seconds += started.elapsed().as_secs_f64();
        }
        // Together: one forward pass per step for the whole batch.
        let mut sequences = prompts
            .iter()
            .map(|p| model.start_sequence(p, &params))
            .collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        loop {
            let mut running = Vec::new();
            for sequence in sequences.iter_mut() {
                if sequence.advance(|_| true)? {
                    running.push(sequence);
                }
            }
            if running.is_empty() {
                break;
            }
            model.step_batch(&mut running)?;
        }
        let together_seconds = started.elapsed().as_secs_f64();
        let tokens = (batch * steps) as f64;
        println!(
            "{{\"batch\": {batch}, \"tokens\": {tokens}, \"alone_tokens_per_second\": {:.1}, \
             \"together_tokens_per_second\": {:.1}, \"speedup\": {:.2}}}",
            tokens / alone_seconds,
            tokens / together_seconds,
            alone_seconds / together_seconds
        );
    }
    Ok(())
}
