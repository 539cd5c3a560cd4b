//! The knowledge base as the loop and the server's answer pipeline read it: a knowledge
//! base's stored chunks as `rag` passages, and the grounded prompt as chat messages for a model.

use anyhow::Result;
use kefu_db::{Database, StoredChunk};
use kefu_model::{ChatMessage, LoadedModel, Role};
use kefu_rag::prompt::{GroundedPrompt, grounded_prompt};
use kefu_rag::{Passage, Ranked, Retriever};

fn passage(chunk: StoredChunk) -> Passage {
    Passage {
        id: chunk.id,
        document_id: chunk.document_id,
        path: chunk.path,
        title: chunk.title,
        language: chunk.language,
        heading_path: chunk.heading_path,
        text: chunk.text,
    }
}

/// One knowledge base's stored chunks, indexed for retrieval.
pub async fn load_retriever(database: &Database, knowledge_base_id: i64) -> Result<Retriever> {
    let chunks = database.chunks(knowledge_base_id).await?;
    Ok(Retriever::new(
        knowledge_base_id,
        chunks.into_iter().map(passage).collect(),
    ))
}

/// The grounded prompt of `question` under `model`'s tokenizer (at most `max_passages`
/// passages within `context_tokens`), and its two chat messages: instructions with the
/// passages, then the question.
pub fn grounded(
    model: &LoadedModel,
    retriever: &Retriever,
    ranked: &Ranked,
    question: &str,
    max_passages: usize,
    context_tokens: usize,
) -> Result<(GroundedPrompt, Vec<ChatMessage>)> {
    let prompt = grounded_prompt(
        |text| model.encode(text).map(|ids| ids.len()),
        retriever,
        ranked,
        question,
        max_passages,
        context_tokens,
    )?;
    let messages = vec![
        ChatMessage::new(Role::System, prompt.system.clone()),
        ChatMessage::new(Role::User, prompt.question.clone()),
    ];
    Ok((prompt, messages))
}
