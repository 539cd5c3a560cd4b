-- The feedback inbox: an admin's decision on a rated answer, whether what its feedback says
-- becomes training data. Append-only like the feedback itself; the latest decision on a
-- message counts, and an answer without one is pending (included).
CREATE TABLE feedback_reviews (
    id BIGSERIAL PRIMARY KEY,
    message_id BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    decision TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected')),
    reviewer TEXT,
    created_ms BIGINT NOT NULL
);
CREATE INDEX feedback_reviews_by_message ON feedback_reviews (message_id, id);
