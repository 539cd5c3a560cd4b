//! Chat templates: the Jinja template the model ships (GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`), with ChatML as the fallback.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// ChatML, used by SmolLM2 and Qwen2 and by any model that ships no template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turns (`<start_of_turn>user` … `<end_of_turn>`, the assistant called `model`), for
/// Gemma files that ship no template: a system message opens the first user turn, since Gemma
/// has no system role.
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}{% else %}{% set first = '' %}{% set turns = messages %}{% endif %}{% for message in turns %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' + (first if loop.first else '') }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// The template for a model that ships none: Gemma's turns for gemma, ChatML for the others.
pub fn default_template(architecture: crate::Architecture) -> &'static str {
    match architecture.is_gemma() {
        true => GEMMA_TEMPLATE,
        false => CHATML_TEMPLATE,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    source: String,
    environment: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` are the strings templates may refer to.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut environment = minijinja::Environment::new();
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        environment
            .add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(e.to_string()))?;
        Ok(Self {
            source: source.to_string(),
            environment,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    pub fn chatml() -> Self {
        Self::new(CHATML_TEMPLATE, "", "<|im_end|>").expect("the built-in ChatML template compiles")
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the assistant's
    /// next reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .environment
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| Error::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_system_user_assistant_turns() {
        let template = ChatTemplate::chatml();
        let text = template
            .render(
                &[
                    ChatMessage::new(Role::System, "Be brief."),
                    ChatMessage::new(Role::User, "Hi"),
                    ChatMessage::new(Role::Assistant, "Hello!"),
                    ChatMessage::new(Role::User, "你好"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn gemma_puts_the_system_message_into_the_first_user_turn() {
        let template = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let text = template
            .render(
                &[
                    ChatMessage::new(Role::System, "Be brief."),
                    ChatMessage::new(Role::User, "Hi "),
                    ChatMessage::new(Role::Assistant, "Hello!"),
                    ChatMessage::new(Role::User, "你好"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\n你好<end_of_turn>\n\
             <start_of_turn>model\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let template = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip() }}",
            "",
            "",
        )
        .unwrap();
        let ok = template
            .render(&[ChatMessage::new(Role::User, "  padded  ")], false)
            .unwrap();
        assert_eq!(ok, "padded");
        let err = template
            .render(&[ChatMessage::new(Role::System, "x")], false)
            .unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn a_broken_template_is_an_error_not_a_panic() {
        let err = ChatTemplate::new("{% for x in %}", "", "").unwrap_err();
        assert!(matches!(err, Error::Template(_)));
    }
}
