//! Chunked prefill and the prefix cache against one-shot prefill, on tiny models of both
//! architectures and on both real catalog models; the cache's eviction, bounds and private
//! copies.
//!
//! With the weights as dense f32 the paths agree to float rounding (logits within 1e-4 here,
//! identical greedy tokens). The served CPU kernels quantize activations to 8 bits per block,
//! which turns rounding-level differences between a one-position pass and a many-position pass
//! into logit differences of up to a few units: decoding itself (one position per pass) differs
//! that much from a whole-prompt pass, with or without chunks. So on the quantized path the
//! tests require chunked prefill to stay within what one-position passes already differ by.

mod common;

use candle_core::{Device, Tensor};
use common::{max_abs_diff, model_path, small_model_path};
use kefu_model::generate::GenerationParams;
use kefu_model::{
    Architecture, ChatMessage, DecoderOptions, Error, KvCache, LoadOptions, LoadedModel,
    PrefixCache, Role,
};

/// The weights as dense f32: no activation quantization, so every path agrees to rounding.
fn dense() -> LoadOptions {
    LoadOptions {
        decoder: DecoderOptions {
            dense: true,
            ..DecoderOptions::default()
        },
        ..LoadOptions::default()
    }
}

fn tiny(architecture: Architecture) -> (tempfile::TempDir, LoadedModel) {
    common::tiny_model(architecture, &dense())
}

fn forced(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        ignore_eos: true,
        ..GenerationParams::default()
    }
}

fn chat(model: &LoadedModel, turns: &[(Role, &str)]) -> Vec<u32> {
    let messages: Vec<ChatMessage> = turns
        .iter()
        .map(|(r, t)| ChatMessage::new(*r, *t))
        .collect();
    model.chat_prompt(&messages).unwrap()
}

/// Greedy tokens of `prompt` prefilled `chunk` tokens at a time after what `prefix` holds.
fn generate_chunked(
    model: &LoadedModel,
    prompt: &[u32],
    chunk: usize,
    prefix: Option<&PrefixCache>,
    max_tokens: usize,
) -> (Vec<u32>, usize) {
    let mut sequence = model
        .begin_sequence(prompt, &forced(max_tokens), prefix)
        .unwrap();
    let reused = sequence.reused_tokens();
    let mut chunks = 0;
    while !sequence.prefill(chunk).unwrap() {
        chunks += 1;
        assert!(chunks <= prompt.len(), "prefill never ended");
    }
    assert!(sequence.is_prefilled());
    assert_eq!(sequence.prompt_tokens_left(), 0);
    while sequence.advance(|_| true).unwrap() {
        model.step_batch(&mut [&mut sequence]).unwrap();
    }
    if let Some(prefix) = prefix {
        sequence.remember(prefix).unwrap();
    }
    (sequence.finish(|_| true).tokens, reused)
}

/// The decoder's logits for every position fed in chunks through one cache, against one pass
/// over all positions.
fn chunked_logits_diff(model: &LoadedModel, ids: &[u32], chunk: usize) -> f32 {
    let all = model
        .decoder
        .forward_all(
            &Tensor::new(ids, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    let mut cache = KvCache::new(model.config());
    let mut worst = 0f32;
    for start in (0..ids.len()).step_by(chunk) {
        let end = (start + chunk).min(ids.len());
        let x = Tensor::new(&ids[start..end], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let last = model
            .decoder
            .forward(&x, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap();
        worst = worst.max(max_abs_diff(&last, &all.get(end - 1).unwrap()));
    }
    assert_eq!(cache.len(), ids.len());
    worst
}

#[test]
fn chunked_prefill_gives_the_one_shot_logits_and_tokens() {
    for architecture in Architecture::ALL {
        let (_dir, model) = tiny(architecture);
        let prompt = chat(
            &model,
            &[(Role::User, "where is my parcel, it is late again")],
        );
        assert!(prompt.len() > 8, "{}", prompt.len());
        for chunk in [1, 3, 7, prompt.len() - 1] {
            let diff = chunked_logits_diff(&model, &prompt, chunk);
            assert!(diff < 1e-4, "{architecture:?} chunk {chunk}: {diff}");
        }
        let one_shot = model
            .generate(&prompt, &forced(16), |_| true)
            .unwrap()
            .tokens;
        for chunk in [1, 4, 5, prompt.len(), 10_000] {
            let (tokens, reused) = generate_chunked(&model, &prompt, chunk, None, 16);
            assert_eq!(tokens, one_shot, "{architecture:?} chunk {chunk}");
            assert_eq!(reused, 0);
        }
    }
}

#[test]
fn a_follow_up_turn_runs_only_its_new_tokens_and_answers_the_same() {
    for architecture in Architecture::ALL {
        let (_dir, model) = tiny(architecture);
        let prefix = PrefixCache::new(64 << 20);
        let first = chat(
            &model,
            &[(Role::System, "Be brief."), (Role::User, "hello")],
        );
        let (reply, reused) = generate_chunked(&model, &first, 4, Some(&prefix), 8);
        assert_eq!(reused, 0, "an empty cache holds nothing");
        // The next turn's prompt starts with the first prompt and the reply's tokens.
        let mut follow_up = first.clone();
        follow_up.extend(&reply);
        follow_up.extend(chat(&model, &[(Role::User, "and then?")]));
        let plain = model
            .generate(&follow_up, &forced(12), |_| true)
            .unwrap()
            .tokens;
        let (cached, reused) = generate_chunked(&model, &follow_up, 3, Some(&prefix), 12);
        // The reply's last token was sampled but never run (the token budget ended it).
        assert_eq!(reused, first.len() + reply.len() - 1, "{architecture:?}");
        assert_eq!(cached, plain, "{architecture:?}");
        let stats = prefix.stats();
        assert_eq!((stats.lookups, stats.hits), (2, 1));
        // The follow-up extends the first conversation: one entry replaces the other.
        assert_eq!(stats.entries, 1);

        // The same prompt again: all but its last token comes from the cache, and the answer
        // is unchanged (stored state is a private copy the running sequence did not touch).
        let (again, reused) = generate_chunked(&model, &follow_up, 64, Some(&prefix), 12);
        assert_eq!(reused, follow_up.len() - 1);
        assert_eq!(again, plain);

        // A prompt that shares only the beginning reuses that much.
        let other = chat(
            &model,
            &[(Role::System, "Be brief."), (Role::User, "goodbye")],
        );
        let shared = first.iter().zip(&other).take_while(|(a, b)| a == b).count();
        let (tokens, reused) = generate_chunked(&model, &other, 2, Some(&prefix), 6);
        assert_eq!(reused, shared);
        assert_eq!(
            tokens,
            model.generate(&other, &forced(6), |_| true).unwrap().tokens
        );
    }
}

#[test]
fn a_full_cache_forgets_the_least_recently_used_and_never_fails() {
    let (_dir, model) = tiny(Architecture::Qwen2);
    let prompts: Vec<Vec<u32>> = ["one", "two two", "three three three"]
        .iter()
        .map(|t| chat(&model, &[(Role::User, t)]))
        .collect();
    // Room for about one conversation's state.
    let one = {
        let probe = PrefixCache::new(usize::MAX);
        generate_chunked(&model, &prompts[2], 64, Some(&probe), 4);
        probe.stats().bytes
    };
    assert!(one > 0);
    let prefix = PrefixCache::new(one + one / 2);
    for prompt in &prompts {
        let (tokens, _) = generate_chunked(&model, prompt, 64, Some(&prefix), 4);
        assert_eq!(tokens.len(), 4);
    }
    let stats = prefix.stats();
    assert!(stats.evictions >= 1, "{stats:?}");
    assert!(stats.bytes <= prefix.capacity_bytes(), "{stats:?}");
    // The newest is kept, the oldest forgotten.
    let (_, reused) = generate_chunked(&model, &prompts[2], 64, Some(&prefix), 4);
    assert_eq!(reused, prompts[2].len() - 1);
    // A cache of no bytes keeps nothing, and is no error.
    let none = PrefixCache::new(0);
    generate_chunked(&model, &prompts[0], 64, Some(&none), 4);
    let (_, reused) = generate_chunked(&model, &prompts[0], 64, Some(&none), 4);
    assert_eq!((reused, none.stats().entries), (0, 0));
}

#[test]
fn bad_chunks_and_prompts_are_refused_before_any_work() {
    let (_dir, model) = tiny(Architecture::Llama);
    let prompt = chat(&model, &[(Role::User, "hello")]);
    let mut sequence = model.begin_sequence(&prompt, &forced(4), None).unwrap();
    assert!(matches!(
        sequence.prefill(0),
        Err(Error::InvalidParameter(_))
    ));
    assert_eq!(sequence.prompt_tokens_left(), prompt.len(), "nothing ran");
    // Advancing before the prompt has run is an error, not a panic.
    assert!(sequence.advance(|_| true).is_err());
    let context = model.config().max_position_embeddings;
    let long = vec![5u32; context];
    let prefix = PrefixCache::new(1 << 20);
    assert!(matches!(
        model.begin_sequence(&long, &forced(4), Some(&prefix)),
        Err(Error::PromptTooLong { .. })
    ));
}

/// Both real catalog models: dense, chunked prefill and a cached prefix give one-shot prefill's
/// logits and greedy tokens; quantized as served, chunks stay within the kernels' own variation.
#[test]
fn real_models_answer_the_same_with_chunks_and_a_cached_prefix() {
    for path in [
        small_model_path(),
        model_path("qwen2.5-coder-0.5b-instruct"),
    ] {
        let model = LoadedModel::load(&path, &dense()).unwrap();
        let first = chat(
            &model,
            &[
                (
                    Role::System,
                    "Answer from the passage.\n\n[1] Debian FAQ\nDebian releases are named after \
                     characters of the Toy Story films; the unstable distribution is always \
                     called sid.",
                ),
                (Role::User, "What is the unstable distribution called?"),
            ],
        );
        let one_shot = model
            .generate(&first, &forced(12), |_| true)
            .unwrap()
            .tokens;
        let prefix = PrefixCache::new(256 << 20);
        let (chunked, _) = generate_chunked(&model, &first, 16, Some(&prefix), 12);
        assert_eq!(chunked, one_shot, "{}", path.display());
        let diff = chunked_logits_diff(&model, &first, 16);
        assert!(diff < 1e-3, "{}: {diff}", path.display());
        let mut follow_up = first.clone();
        follow_up.extend(&chunked);
        follow_up.extend(chat(&model, &[(Role::User, "Why?")]));
        let plain = model
            .generate(&follow_up, &forced(12), |_| true)
            .unwrap()
            .tokens;
        let (cached, reused) = generate_chunked(&model, &follow_up, 16, Some(&prefix), 12);
        assert_eq!(reused, first.len() + chunked.len() - 1);
        assert_eq!(cached, plain, "{}", path.display());
        drop(model);

        // As served (8-bit activations): 16-token chunks differ from the whole pass by no more
        // than one-position passes (decoding) already do.
        let served = LoadedModel::load(&path, &LoadOptions::default()).unwrap();
        let by_chunks = chunked_logits_diff(&served, &first, 16);
        let by_positions = chunked_logits_diff(&served, &first, 1);
        eprintln!(
            "{}: served kernels, largest logit difference from one pass: chunks of 16 \
             {by_chunks:.3}, one position at a time {by_positions:.3}",
            path.display()
        );
        assert!(
            by_chunks <= by_positions,
            "{}: {by_chunks} > {by_positions}",
            path.display()
        );
    }
}
