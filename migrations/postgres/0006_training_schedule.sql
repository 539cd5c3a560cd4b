-- When the worker starts training jobs by itself (besides an admin's click): every so many
-- minutes, and / or once so many feedback events arrived since the last job. One row per model;
-- no row, or NULL in both, means only admins start jobs.
CREATE TABLE training_schedules (
    model TEXT PRIMARY KEY,
    every_minutes BIGINT,
    after_new_feedback BIGINT,
    updated_ms BIGINT NOT NULL
);
