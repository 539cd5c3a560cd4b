-- Conversations, their messages, what each answer was served with, and feedback events.
-- Times are milliseconds since the Unix epoch, written by the application.
CREATE TABLE conversations (
    id BIGSERIAL PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    knowledge_base_id BIGINT NOT NULL REFERENCES knowledge_bases (id),
    customer_secret_hash TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'assistant',
    created_ms BIGINT NOT NULL
);

CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    reply_to BIGINT REFERENCES messages (id),
    created_ms BIGINT NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

CREATE TABLE served_prompts (
    message_id BIGINT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    model_version TEXT NOT NULL,
    template_id TEXT NOT NULL,
    sampling TEXT NOT NULL,
    retrieved TEXT NOT NULL,
    prompt TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    first_token_ms BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    finish_reason TEXT NOT NULL
);

CREATE TABLE feedback_events (
    id BIGSERIAL PRIMARY KEY,
    message_id BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    rater_role TEXT NOT NULL,
    rater TEXT,
    rating BIGINT NOT NULL,
    reasons TEXT NOT NULL,
    comment TEXT,
    corrected_answer TEXT,
    created_ms BIGINT NOT NULL
);
CREATE INDEX feedback_by_message ON feedback_events (message_id, id);
