//! The retraining loop's records: model versions (immutable, named by a content hash) and the
//! labels that point at them (`production`, `candidate`, `previous`); training jobs, a queue
//! with leases — a worker claims a job, renews the lease while it runs, and a job whose lease
//! ran out is queued again (or failed once its attempts are spent) — at most one queued or
//! running job per model.

use sqlx::Row;

use crate::chat::now_ms;
use crate::{Database, DbError, Result};

pub const PRODUCTION: &str = "production";
pub const CANDIDATE: &str = "candidate";
pub const PREVIOUS: &str = "previous";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    /// Content hash of the weights (and what made them).
    pub id: String,
    /// The weights file, relative to the data directory.
    pub path: String,
    /// The version it was trained from.
    pub parent_id: Option<String>,
    pub job_id: Option<i64>,
    /// The evaluation report (JSON).
    pub report: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => return Err(DbError::Malformed(format!("job status `{other}`"))),
        })
    }
}

/// The automatic triggers of training jobs: a schedule and a threshold (`None`: off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainingSchedule {
    /// Start a job when this many minutes passed since the last one began.
    pub every_minutes: Option<i64>,
    /// Start a job once this many feedback events (ratings, corrections) arrived since the
    /// last job began.
    pub after_new_feedback: Option<i64>,
}

impl TrainingSchedule {
    pub fn is_off(&self) -> bool {
        self.every_minutes.is_none() && self.after_new_feedback.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingJob {
    pub id: i64,
    pub model: String,
    pub status: JobStatus,
    /// `admin`, `schedule` or `threshold`.
    pub trigger: String,
    pub requested_by: Option<i64>,
    pub attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_ms: Option<i64>,
    /// What the worker last reported (JSON): stage, step, losses…
    pub progress: String,
    pub error: Option<String>,
    pub result_version: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

const VERSION_COLUMNS: &str = "id, path, parent_id, job_id, report, created_ms";
const JOB_COLUMNS: &str = "id, model, status, trigger, requested_by, attempts, lease_owner, \
     lease_expires_ms, progress, error, result_version, created_ms, started_ms, finished_ms";

fn version_from(row: &sqlx::any::AnyRow) -> Result<ModelVersion> {
    Ok(ModelVersion {
        id: row.try_get("id")?,
        path: row.try_get("path")?,
        parent_id: row.try_get("parent_id")?,
        job_id: row.try_get("job_id")?,
        report: row.try_get("report")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn job_from(row: &sqlx::any::AnyRow) -> Result<TrainingJob> {
    let status: String = row.try_get("status")?;
    Ok(TrainingJob {
        id: row.try_get("id")?,
        model: row.try_get("model")?,
        status: JobStatus::parse(&status)?,
        trigger: row.try_get("trigger")?,
        requested_by: row.try_get("requested_by")?,
        attempts: row.try_get("attempts")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_ms: row.try_get("lease_expires_ms")?,
        progress: row.try_get("progress")?,
        error: row.try_get("error")?,
        result_version: row.try_get("result_version")?,
        created_ms: row.try_get("created_ms")?,
        started_ms: row.try_get("started_ms")?,
        finished_ms: row.try_get("finished_ms")?,
    })
}

/// Whether a database error is a unique-constraint violation (both engines).
fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => {
            e.is_unique_violation() || e.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

impl Database {
    /// Records a version; an existing id is left as it is (versions are immutable).
    pub async fn register_version(&self, version: &ModelVersion) -> Result<ModelVersion> {
        let sql = "INSERT INTO model_versions (id, path, parent_id, job_id, report, created_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING";
        sqlx::query(sql)
            .bind(&version.id)
            .bind(&version.path)
            .bind(version.parent_id.as_deref())
            .bind(version.job_id)
            .bind(&version.report)
            .bind(version.created_ms)
            .execute(&self.pool)
            .await?;
        self.model_version(&version.id)
            .await?
            .ok_or_else(|| DbError::Malformed(format!("version {} vanished", version.id)))
    }

    pub async fn model_version(&self, id: &str) -> Result<Option<ModelVersion>> {
        let sql = format!("SELECT {VERSION_COLUMNS} FROM model_versions WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| version_from(&r)).transpose()
    }

    /// Every version, newest first.
    pub async fn model_versions(&self) -> Result<Vec<ModelVersion>> {
        let sql =
            format!("SELECT {VERSION_COLUMNS} FROM model_versions ORDER BY created_ms DESC, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(version_from).collect()
    }

    /// The version a label points at.
    pub async fn labelled(&self, label: &str) -> Result<Option<ModelVersion>> {
        let sql = format!(
            "SELECT {} FROM model_versions v JOIN model_labels l ON l.version_id = v.id \
             WHERE l.label = $1",
            VERSION_COLUMNS
                .split(", ")
                .map(|c| format!("v.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(label)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| version_from(&r)).transpose()
    }

    /// Every label and the version it points at.
    pub async fn labels(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT label, version_id FROM model_labels ORDER BY label")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("label")?, r.try_get("version_id")?)))
            .collect()
    }

    /// Points `label` at `version_id`.
    pub async fn set_label(&self, label: &str, version_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO model_labels (label, version_id, updated_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (label) DO UPDATE SET version_id = excluded.version_id, \
             updated_ms = excluded.updated_ms",
        )
        .bind(label)
        .bind(version_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes `version_id` production and the old production `previous`, in one transaction.
    /// Returns the old production version, if any.
    pub async fn promote(&self, version_id: &str) -> Result<Option<String>> {
        let mut transaction = self.pool.begin().await?;
        let old: Option<String> =
            sqlx::query("SELECT version_id FROM model_labels WHERE label = $1")
                .bind(PRODUCTION)
                .fetch_optional(&mut *transaction)
                .await?
                .map(|r| r.try_get("version_id"))
                .transpose()?;
        let now = now_ms();
        let upsert = "INSERT INTO model_labels (label, version_id, updated_ms) VALUES ($1, $2, $3) \
                      ON CONFLICT (label) DO UPDATE SET version_id = excluded.version_id, \
                      updated_ms = excluded.updated_ms";
        if let Some(old) = old.as_deref().filter(|old| *old != version_id) {
            sqlx::query(upsert)
                .bind(PREVIOUS)
                .bind(old)
                .bind(now)
                .execute(&mut *transaction)
                .await?;
        }
        sqlx::query(upsert)
            .bind(PRODUCTION)
            .bind(version_id)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(old)
    }

    /// Swaps `production` and `previous` (a rollback); `None` when there is no previous
    /// version.
    pub async fn rollback(&self) -> Result<Option<(String, String)>> {
        let mut transaction = self.pool.begin().await?;
        let get = "SELECT version_id FROM model_labels WHERE label = $1";
        let mut current = None;
        let mut previous = None;
        for (label, slot) in [(PRODUCTION, &mut current), (PREVIOUS, &mut previous)] {
            *slot = sqlx::query(get)
                .bind(label)
                .fetch_optional(&mut *transaction)
                .await?
                .map(|r| r.try_get::<String, _>("version_id"))
                .transpose()?;
        }
        let (Some(current), Some(previous)) = (current, previous) else {
            return Ok(None);
        };
        let now = now_ms();
        for (label, version) in [(PRODUCTION, &previous), (PREVIOUS, &current)] {
            sqlx::query(
                "UPDATE model_labels SET version_id = $1, updated_ms = $2 WHERE label = $3",
            )
            .bind(version)
            .bind(now)
            .bind(label)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(Some((current, previous)))
    }

    /// Queues a job for `model`; `Err(job)` with the queued or running one when there is one
    /// already (one job at a time per model).
    pub async fn enqueue_job(
        &self,
        model: &str,
        trigger: &str,
        requested_by: Option<i64>,
    ) -> Result<std::result::Result<TrainingJob, TrainingJob>> {
        let sql = format!(
            "INSERT INTO training_jobs (model, status, trigger, requested_by, created_ms) \
             VALUES ($1, 'queued', $2, $3, $4) RETURNING {JOB_COLUMNS}"
        );
        let inserted = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(model)
            .bind(trigger)
            .bind(requested_by)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await;
        match inserted {
            Ok(row) => Ok(Ok(job_from(&row)?)),
            Err(e) if is_unique_violation(&e) => {
                let active = self.active_job(model).await?.ok_or_else(|| {
                    DbError::Malformed("a job blocked the queue and then vanished".into())
                })?;
                Ok(Err(active))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The queued or running job of `model`.
    pub async fn active_job(&self, model: &str) -> Result<Option<TrainingJob>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM training_jobs WHERE model = $1 \
             AND status IN ('queued', 'running')"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(model)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| job_from(&r)).transpose()
    }

    pub async fn job(&self, id: i64) -> Result<Option<TrainingJob>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM training_jobs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| job_from(&r)).transpose()
    }

    /// Jobs, newest first.
    pub async fn jobs(&self, limit: i64) -> Result<Vec<TrainingJob>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM training_jobs ORDER BY id DESC LIMIT $1");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from).collect()
    }

    /// The finish time of the last job that succeeded (for "what is new since").
    pub async fn last_succeeded_job(&self, model: &str) -> Result<Option<TrainingJob>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM training_jobs WHERE model = $1 AND status = 'succeeded' \
             ORDER BY id DESC LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(model)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| job_from(&r)).transpose()
    }

    /// Takes the oldest queued job for `owner`, holding it for `lease_ms`. First, jobs whose
    /// lease ran out (their worker died) go back to the queue — or fail, once they have been
    /// tried `max_attempts` times.
    pub async fn claim_job(
        &self,
        owner: &str,
        lease_ms: i64,
        max_attempts: i64,
    ) -> Result<Option<TrainingJob>> {
        let now = now_ms();
        sqlx::query(
            "UPDATE training_jobs SET status = 'failed', finished_ms = $1, lease_owner = NULL, \
             error = 'the worker stopped renewing its lease (killed?) and the job has no \
             attempts left' WHERE status = 'running' AND lease_expires_ms < $1 AND attempts >= $2",
        )
        .bind(now)
        .bind(max_attempts)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "UPDATE training_jobs SET status = 'queued', lease_owner = NULL, \
             error = 'the worker stopped renewing its lease (killed?); queued again' \
             WHERE status = 'running' AND lease_expires_ms < $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        // Claim by compare-and-set on the status, so two workers never take one job.
        let Some(candidate) =
            sqlx::query("SELECT id FROM training_jobs WHERE status = 'queued' ORDER BY id LIMIT 1")
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let id: i64 = candidate.try_get("id")?;
        let sql = format!(
            "UPDATE training_jobs SET status = 'running', lease_owner = $1, \
             lease_expires_ms = $2, attempts = attempts + 1, started_ms = $3 \
             WHERE id = $4 AND status = 'queued' RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| job_from(&r)).transpose()
    }

    /// Renews `owner`'s lease on job `id` and stores its progress; `false` when the job is no
    /// longer this worker's (its lease ran out and it was taken back, or it was cancelled).
    pub async fn heartbeat_job(
        &self,
        id: i64,
        owner: &str,
        lease_ms: i64,
        progress: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE training_jobs SET lease_expires_ms = $1, progress = $2 \
             WHERE id = $3 AND lease_owner = $4 AND status = 'running'",
        )
        .bind(now_ms() + lease_ms)
        .bind(progress)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends `owner`'s job `id` as succeeded (with its version) or failed (with the reason).
    pub async fn finish_job(
        &self,
        id: i64,
        owner: &str,
        outcome: std::result::Result<Option<&str>, &str>,
    ) -> Result<bool> {
        let (status, version, error) = match outcome {
            Ok(version) => (JobStatus::Succeeded, version, None),
            Err(reason) => (JobStatus::Failed, None, Some(reason)),
        };
        let done = sqlx::query(
            "UPDATE training_jobs SET status = $1, result_version = $2, error = $3, \
             finished_ms = $4, lease_owner = NULL WHERE id = $5 AND lease_owner = $6 \
             AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(version)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Cancels a queued or running job; `false` when it had already ended.
    pub async fn cancel_job(&self, id: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE training_jobs SET status = 'cancelled', finished_ms = $1, lease_owner = NULL \
             WHERE id = $2 AND status IN ('queued', 'running')",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The newest job of `model`, whatever its status.
    pub async fn last_job(&self, model: &str) -> Result<Option<TrainingJob>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM training_jobs WHERE model = $1 ORDER BY id DESC LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(model)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| job_from(&r)).transpose()
    }

    /// When the worker starts jobs for `model` by itself (both off when never set).
    pub async fn training_schedule(&self, model: &str) -> Result<TrainingSchedule> {
        let row = sqlx::query(
            "SELECT every_minutes, after_new_feedback FROM training_schedules WHERE model = $1",
        )
        .bind(model)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => TrainingSchedule {
                every_minutes: row.try_get("every_minutes")?,
                after_new_feedback: row.try_get("after_new_feedback")?,
            },
            None => TrainingSchedule::default(),
        })
    }

    pub async fn set_training_schedule(
        &self,
        model: &str,
        schedule: &TrainingSchedule,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO training_schedules (model, every_minutes, after_new_feedback, updated_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (model) DO UPDATE SET \
             every_minutes = excluded.every_minutes, \
             after_new_feedback = excluded.after_new_feedback, updated_ms = excluded.updated_ms",
        )
        .bind(model)
        .bind(schedule.every_minutes)
        .bind(schedule.after_new_feedback)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Feedback events recorded at or after `since_ms`.
    pub async fn feedback_since(&self, since_ms: i64) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM feedback_events WHERE created_ms >= $1")
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Inbox decisions (accept / reject) made at or after `since_ms`.
    pub async fn reviews_since(&self, since_ms: i64) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM feedback_reviews WHERE created_ms >= $1")
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }
}
