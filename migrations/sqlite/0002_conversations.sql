-- Conversations, their messages, what each answer was served with, and feedback events.
-- Times are milliseconds since the Unix epoch, written by the application.
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    public_id TEXT NOT NULL UNIQUE,
    knowledge_base_id INTEGER NOT NULL REFERENCES knowledge_bases (id),
    customer_secret_hash TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'assistant',
    created_ms INTEGER NOT NULL
);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    reply_to INTEGER REFERENCES messages (id),
    created_ms INTEGER NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

CREATE TABLE served_prompts (
    message_id INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    model_version TEXT NOT NULL,
    template_id TEXT NOT NULL,
    sampling TEXT NOT NULL,
    retrieved TEXT NOT NULL,
    prompt TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    first_token_ms INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    finish_reason TEXT NOT NULL
);

CREATE TABLE feedback_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    rater_role TEXT NOT NULL,
    rater TEXT,
    rating INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    comment TEXT,
    corrected_answer TEXT,
    created_ms INTEGER NOT NULL
);
CREATE INDEX feedback_by_message ON feedback_events (message_id, id);
