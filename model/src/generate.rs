//! The generation loop: prefill, sample, stream text pieces, stop on end-of-turn tokens, stop
//! strings or the token budget.

use std::time::Instant;

use candle_core::Tensor;

use crate::chat::ChatMessage;
use crate::decoder::KvCache;
use crate::error::{Error, Result};
use crate::loader::LoadedModel;
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
/// streaming, since it may still become a stop string).
fn partial_stop_suffix(text: &str, stops: &[String]) -> usize {
    let mut longest = 0;
    for (start, _) in text.char_indices() {
        let suffix = &text[start..];
        if stops.iter().any(|s| s.starts_with(suffix)) {
            longest = longest.max(suffix.len());
            break;
        }
    }
    longest
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
        let mut sampler = Sampler::new(params.sampling.clone())?;
        let budget = params.max_tokens.min(context - prompt.len());
        let device = self.decoder.device();
        let mut cache = KvCache::new(self.config());
        let mut history: Vec<u32> = prompt.to_vec();
        let mut streamer = TextStreamer::new(&self.tokenizer);
        let mut sent = 0usize;

        let start = Instant::now();
        let input = Tensor::new(prompt, device)?.unsqueeze(0)?;
        let mut logits = self.decoder.forward(&input, &mut cache)?;
        let prefill_seconds = start.elapsed().as_secs_f64();
        let decode_start = Instant::now();
        let mut generated = Vec::new();
        let mut finish_reason = FinishReason::Length;
        let mut final_text: Option<String> = None;
        while generated.len() < budget {
            let mut row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
            let token = sampler.sample(&mut row, &history);
            if !params.ignore_eos && self.stop_token_ids.contains(&token) {
                finish_reason = FinishReason::EndOfTurn;
                break;
            }
            generated.push(token);
            history.push(token);
            if streamer.push(token)?.is_some() {
                let text = streamer.text();
                if let Some(at) = params
                    .stop
                    .iter()
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    if at > sent {
                        on_text(&text[sent..at]);
                    }
                    final_text = Some(text[..at].to_string());
                    finish_reason = FinishReason::StopString;
                    break;
                }
                let ready = text.len() - partial_stop_suffix(text, &params.stop);
                if ready > sent {
                    let keep_going = on_text(&text[sent..ready]);
                    sent = ready;
                    if !keep_going {
                        finish_reason = FinishReason::Cancelled;
                        break;
                    }
                }
            }
            if generated.len() == budget {
                break;
            }
            let input = Tensor::new(&[token], device)?.unsqueeze(0)?;
            logits = self.decoder.forward(&input, &mut cache)?;
        }
        let text = match final_text {
            Some(text) => text,
            None => {
                let text = streamer.text().to_string();
                if finish_reason != FinishReason::Cancelled && text.len() > sent {
                    on_text(&text[sent..]);
                }
                text
            }
        };
        Ok(Generation {
            text,
            tokens: generated,
            prompt_tokens: prompt.len(),
            finish_reason,
            prefill_seconds,
            decode_seconds: decode_start.elapsed().as_secs_f64(),
        })
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
    }
}
