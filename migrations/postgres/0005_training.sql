-- The retraining loop. Model versions are immutable and named by a content hash; labels
-- (production, candidate, previous) point at versions and move. Training jobs are a queue with
-- a lease: a worker claims a job, renews its lease while it runs, and a job whose lease ran out
-- is retried or failed with a reason. At most one queued or running job per model.
CREATE TABLE model_versions (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    parent_id TEXT REFERENCES model_versions (id),
    job_id BIGINT,
    report TEXT NOT NULL DEFAULT '{}',
    created_ms BIGINT NOT NULL
);

CREATE TABLE model_labels (
    label TEXT PRIMARY KEY,
    version_id TEXT NOT NULL REFERENCES model_versions (id),
    updated_ms BIGINT NOT NULL
);

CREATE TABLE training_jobs (
    id BIGSERIAL PRIMARY KEY,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    requested_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_ms BIGINT,
    progress TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    result_version TEXT,
    created_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT
);

CREATE UNIQUE INDEX training_jobs_one_active ON training_jobs (model)
    WHERE status IN ('queued', 'running');
