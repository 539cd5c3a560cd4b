//! The generation loop: prefill, sample, stream text pieces, stop on end-of-turn tokens, stop
//! strings or the token budget.

use std::time::Instant;

use candle_core::Tensor;

use crate::chat::ChatMessage;
use crate::decoder::KvCache;
use crate::error::{Error, Result};
use crate::loader::LoadedModel;
use crate::prefix::PrefixCache;
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokenizer::TextStreamer;

/// Everything that shapes one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub sampling: SamplingConfig,
    pub max_tokens: usize,
    /// Generation ends before the first of these strings; it is not part of the reply.
    pub stop: Vec<String>,
    /// Keep going past end-of-turn tokens (benchmarks that need a fixed token count).
    pub ignore_eos: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            sampling: SamplingConfig::default(),
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn.
    EndOfTurn,
    /// `max_tokens` (or the context window) was reached.
    Length,
    /// A stop string appeared.
    StopString,
    /// The caller asked to stop (for example, a client disconnected).
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens taken from a prefix cache (the model ran only the rest).
    pub cached_tokens: usize,
    pub finish_reason: FinishReason,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

impl Generation {
    pub fn completion_tokens(&self) -> usize {
        self.tokens.len()
    }
}

/// Length of the longest suffix of `text` that begins some stop string (held back while
/// streaming, since it may still become a stop string). Only the last (longest stop string)
/// bytes can be such a suffix, so the work per call is bounded by the stop strings, not the text.
fn partial_stop_suffix(text: &str, stops: &[String]) -> usize {
    let longest_stop = stops.iter().map(String::len).max().unwrap_or(0);
    let mut from = text.len().saturating_sub(longest_stop);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    for (start, _) in text[from..].char_indices() {
        let suffix = &text[from + start..];
        if stops.iter().any(|s| s.starts_with(suffix)) {
            return suffix.len();
        }
    }
    0
}

impl LoadedModel {
    /// Renders a conversation with the model's chat template and tokenizes it, ready for the
    /// assistant's reply.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        if messages.iter().all(|m| m.content.trim().is_empty()) {
            return Err(Error::EmptyPrompt);
        }
        let text = self.template.render(messages, true)?;
        self.encode(&text)
    }

    /// Generates a continuation of `prompt`. `on_text` receives each new piece of text as soon
    /// as it is complete; returning `false` cancels the generation.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerationParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let mut sequence = self.start_sequence(prompt, params)?;
        while sequence.advance(&mut on_text)? {
            let input =
                Tensor::new(&[sequence.last_token()], self.decoder.device())?.unsqueeze(0)?;
            let logits = self.decoder.forward(&input, &mut sequence.cache)?;
            sequence.pending = Some(sequence.next_of(&logits.squeeze(0)?)?);
        }
        Ok(sequence.finish(on_text))
    }

    /// Checks `prompt` and `params` and runs the prompt through the model (prefill) in one
    /// pass: the returned sequence is ready for its first [`Sequence::advance`].
    pub fn start_sequence(
        &self,
        prompt: &[u32],
        params: &GenerationParams,
    ) -> Result<Sequence<'_>> {
        let mut sequence = self.begin_sequence(prompt, params, None)?;
        sequence.prefill(prompt.len())?;
        Ok(sequence)
    }

    /// Checks `prompt` and `params` and sets up a sequence without running the model: the
    /// longest prefix of `prompt` that `prefix` holds is copied in, and [`Sequence::prefill`]
    /// runs the rest, a chunk at a time, before the first [`Sequence::advance`].
    pub fn begin_sequence(
        &self,
        prompt: &[u32],
        params: &GenerationParams,
        prefix: Option<&PrefixCache>,
    ) -> Result<Sequence<'_>> {
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let context = self.config().max_position_embeddings;
        if prompt.len() >= context {
            return Err(Error::PromptTooLong {
                prompt_tokens: prompt.len(),
                context,
            });
        }
        if params.max_tokens == 0 {
            return Err(Error::InvalidParameter(
                "max_tokens must be at least 1".into(),
            ));
        }
        let vocab = self.config().vocab_size as u32;
        if let Some(bad) = prompt.iter().find(|&&t| t >= vocab) {
            return Err(Error::InvalidParameter(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let sampler = Sampler::new(params.sampling.clone())?;
        let (cache, reused) = match prefix {
            Some(prefix) => prefix.lookup(self.config(), prompt)?,
            None => (KvCache::new(self.config()), 0),
        };
        Ok(Sequence {
            model: self,
            params: params.clone(),
            sampler,
            cache,
            history: prompt.to_vec(),
            streamer: TextStreamer::new(&self.tokenizer),
            budget: params.max_tokens.min(context - prompt.len()),
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            generated: Vec::new(),
            sent: 0,
            pending: None,
            finish_reason: None,
            final_text: None,
            prefill_seconds: 0.0,
            decode_start: Instant::now(),
        })
    }

    /// One decoding step for several sequences together (each has just returned `true` from
    /// [`Sequence::advance`]): one forward pass of the whole batch.
    pub fn step_batch(&self, sequences: &mut [&mut Sequence<'_>]) -> Result<()> {
        if let [one] = sequences {
            // Alone, the plain single-sequence pass.
            let input = Tensor::new(&[one.last_token()], self.decoder.device())?.unsqueeze(0)?;
            let logits = self.decoder.forward(&input, &mut one.cache)?;
            one.pending = Some(one.next_of(&logits.squeeze(0)?)?);
            return Ok(());
        }
        let tokens: Vec<u32> = sequences.iter().map(|s| s.last_token()).collect();
        let logits = {
            let mut caches: Vec<&mut KvCache> =
                sequences.iter_mut().map(|s| &mut s.cache).collect();
            self.decoder.forward_batch(&tokens, &mut caches)?
        };
        for (b, sequence) in sequences.iter_mut().enumerate() {
            sequence.pending = Some(sequence.next_of(&logits.get(b)?)?);
        }
        Ok(())
    }
}

/// One generation in progress, stepped by its caller: [`LoadedModel::generate`] steps one
/// alone; a scheduler steps many together with [`LoadedModel::step_batch`].
pub struct Sequence<'a> {
    model: &'a LoadedModel,
    params: GenerationParams,
    sampler: Sampler,
    cache: KvCache,
    history: Vec<u32>,
    streamer: TextStreamer<'a>,
    budget: usize,
    prompt_tokens: usize,
    /// Prompt positions copied from a prefix cache instead of being run through the model.
    reused_tokens: usize,
    generated: Vec<u32>,
    /// Bytes of the text already handed to the caller.
    sent: usize,
    /// The next position's logits waiting to be sampled, or its token already picked.
    pending: Option<Next>,
    finish_reason: Option<FinishReason>,
    /// The text cut at a stop string.
    final_text: Option<String>,
    prefill_seconds: f64,
    decode_start: Instant,
}

impl std::fmt::Debug for Sequence<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("prompt_tokens", &self.prompt_tokens)
            .field("generated", &self.generated.len())
            .field("finish_reason", &self.finish_reason)
            .finish()
    }
}

/// What a forward pass leaves for the next [`Sequence::advance`].
#[derive(Debug)]
enum Next {
    /// The row of logits, on the host, for the sampler.
    Logits(Vec<f32>),
    /// Greedy decoding on a GPU without a repetition penalty: the arg max, picked on the
    /// device, so a step copies one token id to the host instead of the whole vocabulary's
    /// logits.
    Token(u32),
}

impl Next {
    fn of(row: &Tensor, sampling: &crate::sampling::SamplingConfig) -> Result<Self> {
        let plain_greedy = sampling.temperature <= 0.0 && sampling.repetition_penalty == 1.0;
        Ok(if plain_greedy && !row.device().is_cpu() {
            Next::Token(row.argmax(0)?.to_scalar::<u32>()?)
        } else {
            Next::Logits(row.to_vec1()?)
        })
    }
}

impl Sequence<'_> {
    fn next_of(&self, row: &Tensor) -> Result<Next> {
        Next::of(row, &self.params.sampling)
    }

    /// Runs up to `chunk` more prompt tokens through the model; `true` once the whole prompt
    /// has run (the sequence is then ready for [`Self::advance`]). Each chunk attends to every
    /// position before it, so chunks give what one pass gives.
    pub fn prefill(&mut self, chunk: usize) -> Result<bool> {
        if chunk == 0 {
            return Err(Error::InvalidParameter(
                "a prefill chunk must hold at least one token".into(),
            ));
        }
        let done = self.cache.len();
        if self.pending.is_some() || done >= self.prompt_tokens || self.finish_reason.is_some() {
            return Ok(true);
        }
        let start = Instant::now();
        let end = self.prompt_tokens.min(done + chunk);
        let input =
            Tensor::new(&self.history[done..end], self.model.decoder.device())?.unsqueeze(0)?;
        let logits = self.model.decoder.forward(&input, &mut self.cache)?;
        if end == self.prompt_tokens {
            self.pending = Some(self.next_of(&logits.squeeze(0)?)?);
            self.decode_start = Instant::now();
        }
        self.prefill_seconds += start.elapsed().as_secs_f64();
        Ok(end == self.prompt_tokens)
    }

    /// Whether the whole prompt has run through the model.
    pub fn is_prefilled(&self) -> bool {
        self.pending.is_some() || self.cache.len() >= self.prompt_tokens
    }

    /// Prompt tokens still to run through the model.
    pub fn prompt_tokens_left(&self) -> usize {
        self.prompt_tokens.saturating_sub(self.cache.len())
    }

    /// Prompt tokens taken from a prefix cache.
    pub fn reused_tokens(&self) -> usize {
        self.reused_tokens
    }

    /// Stores what this sequence has run through the model (prompt and reply so far) in
    /// `prefix`, for a later prompt that starts the same way (the conversation's next turn).
    pub fn remember(&self, prefix: &PrefixCache) -> Result<()> {
        let fed = self.cache.len().min(self.history.len());
        prefix.insert(&self.history[..fed], &self.cache)
    }

    /// The token the next forward pass feeds.
    pub fn last_token(&self) -> u32 {
        *self.history.last().expect("a sequence has a prompt")
    }

    pub fn is_finished(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// Samples the next token from the pending logits and hands any completed text to
    /// `on_text` (returning `false` cancels). `true`: the sequence needs another forward pass
    /// of [`Self::last_token`]; `false`: it has finished.
    pub fn advance(&mut self, mut on_text: impl FnMut(&str) -> bool) -> Result<bool> {
        if self.finish_reason.is_some() {
            return Ok(false);
        }
        let token = match self.pending.take() {
            Some(Next::Logits(mut row)) => self.sampler.sample(&mut row, &self.history),
            Some(Next::Token(token)) => token,
            None => {
                return Err(Error::InvalidParameter(
                    "advance needs the logits of a forward pass".into(),
                ));
            }
        };
        let stop_token = self.model.stop_token_ids.contains(&token);
        if !self.params.ignore_eos && stop_token {
            return Ok(self.end(FinishReason::EndOfTurn));
        }
        self.generated.push(token);
        self.history.push(token);
        if self.streamer.push(token)?.is_some() {
            let text = self.streamer.text();
            // Text already streamed holds no stop string nor the start of one (that is held
            // back), so only the rest is searched: linear in the answer overall.
            let stop_at = self
                .params
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text[self.sent..].find(s.as_str()))
                .min()
                .map(|at| self.sent + at);
            if let Some(at) = stop_at {
                if at > self.sent {
                    on_text(&text[self.sent..at]);
                }
                self.final_text = Some(text[..at].to_string());
                return Ok(self.end(FinishReason::StopString));
            }
            let ready = text.len() - partial_stop_suffix(text, &self.params.stop);
            if ready > self.sent {
                let keep_going = on_text(&text[self.sent..ready]);
                self.sent = ready;
                if !keep_going {
                    return Ok(self.end(FinishReason::Cancelled));
                }
            }
        }
        if self.generated.len() >= self.budget {
            return Ok(self.end(FinishReason::Length));
        }
        Ok(true)
    }

    fn end(&mut self, reason: FinishReason) -> bool {
        self.finish_reason = Some(reason);
        false
    }

    /// The finished generation; text held back (a possible stop-string prefix) goes to
    /// `on_text` unless the caller cancelled.
    pub fn finish(self, mut on_text: impl FnMut(&str) -> bool) -> Generation {
        let finish_reason = self.finish_reason.unwrap_or(FinishReason::Length);
        let text = match self.final_text {
            Some(text) => text,
            None => {
                let text = self.streamer.text().to_string();
                if finish_reason != FinishReason::Cancelled && text.len() > self.sent {
                    on_text(&text[self.sent..]);
                }
                text
            }
        };
        Generation {
            text,
            tokens: self.generated,
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.reused_tokens,
            finish_reason,
            prefill_seconds: self.prefill_seconds,
            decode_seconds: self.decode_start.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::partial_stop_suffix;

    #[test]
    fn holds_back_only_a_possible_stop_prefix() {
        let stops = vec!["\nUser:".to_string()];
        assert_eq!(partial_stop_suffix("Hello\nUs", &stops), 3);
        assert_eq!(partial_stop_suffix("Hello", &stops), 0);
        assert_eq!(partial_stop_suffix("你好\n", &stops), 1);
        assert_eq!(partial_stop_suffix("anything", &[]), 0);
        // A stop string whose start is a multi-byte character, at a window edge.
        let stops = vec!["好的".to_string()];
        assert_eq!(partial_stop_suffix("你好", &stops), 3);
        assert_eq!(partial_stop_suffix("abc好", &stops), 3);
        assert_eq!(partial_stop_suffix("你", &stops), 0);
    }

    /// The bounded window finds what a scan of every suffix finds.
    #[test]
    fn the_window_agrees_with_a_full_scan() {
        fn full_scan(text: &str, stops: &[String]) -> usize {
            text.char_indices()
                .map(|(start, _)| &text[start..])
                .find(|suffix| stops.iter().any(|s| s.starts_with(suffix)))
                .map_or(0, str::len)
        }
        let alphabet: Vec<char> = "ab好\n".chars().collect();
        let mut state = 12345u64;
        let mut pick = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        for _ in 0..2000 {
            let text: String = (0..pick(12)).map(|_| alphabet[pick(4)]).collect();
            let stops: Vec<String> = (0..pick(3))
                .map(|_| (0..1 + pick(4)).map(|_| alphabet[pick(4)]).collect())
                .collect();
            assert_eq!(
                partial_stop_suffix(&text, &stops),
                full_scan(&text, &stops),
                "{text:?} {stops:?}"
            );
        }
    }
}
