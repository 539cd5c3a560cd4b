-- Feedback caps: a customer's ratings are counted per source (`rater`, a hash of the client
-- address) over the last hour.
CREATE INDEX feedback_events_by_rater ON feedback_events (rater, created_ms);
