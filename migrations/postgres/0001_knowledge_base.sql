-- Knowledge bases, their documents, and the chunks retrieval cites.
CREATE TABLE knowledge_bases (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE documents (
    id BIGSERIAL PRIMARY KEY,
    knowledge_base_id BIGINT NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    title TEXT NOT NULL,
    language TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    byte_count BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (knowledge_base_id, path)
);

CREATE TABLE chunks (
    id BIGSERIAL PRIMARY KEY,
    document_id BIGINT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal BIGINT NOT NULL,
    heading_path TEXT NOT NULL,
    text TEXT NOT NULL,
    token_count BIGINT NOT NULL,
    UNIQUE (document_id, ordinal)
);
