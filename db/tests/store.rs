//! The same storage scenarios against the real engines: an SQLite file and PostgreSQL on
//! 127.0.0.1:5432 (a fresh database per test, dropped afterwards; `KEFU_TEST_POSTGRES` names
//! another server).

use kefu_db::{
    CANDIDATE, Database, DbError, Engine, JobStatus, ModelVersion, NewChunk, NewDocument, PREVIOUS,
    PRODUCTION, TrainingSchedule,
};

fn postgres_server() -> String {
    std::env::var("KEFU_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A database of its own for one test; dropped when the guard goes.
struct TestDatabase {
    url: String,
    postgres_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    async fn new(engine: Engine, label: &str) -> Self {
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("kefu.db").display());
                Self {
                    url,
                    postgres_name: None,
                    _dir: Some(dir),
                }
            }
            Engine::Postgres => {
                let name = format!("kefu_test_{label}_{}", std::process::id());
                let admin = admin().await;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name}"
                )))
                .execute(&admin)
                .await
                .unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .unwrap();
                admin.close().await;
                Self {
                    url: format!("{}/{name}", postgres_server()),
                    postgres_name: Some(name),
                    _dir: None,
                }
            }
        }
    }

    async fn drop_database(self) {
        if let Some(name) = self.postgres_name {
            let admin = admin().await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await
            .unwrap();
            admin.close().await;
        }
    }
}

async fn admin() -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&format!("{}/postgres", postgres_server()))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {} ({e}); .ci/run starts it",
                postgres_server()
            )
        })
}

fn document(path: &str, hash: &str, chunks: &[&str]) -> NewDocument {
    NewDocument {
        path: path.into(),
        title: format!("Title of {path}"),
        language: "en".into(),
        content_hash: hash.into(),
        byte_count: 42,
        chunks: chunks
            .iter()
            .map(|text| NewChunk {
                heading_path: vec!["Chapter 1".into(), "1.2 Reset".into()],
                text: text.to_string(),
                token_count: text.split_whitespace().count() as i64,
            })
            .collect(),
    }
}

async fn documents_chunks_and_replacement(engine: Engine) {
    let test = TestDatabase::new(engine, "documents").await;
    let db = Database::connect(&test.url).await.unwrap();
    assert_eq!(db.engine(), engine);
    let kb = db.knowledge_base("support").await.unwrap();
    assert_eq!(
        db.knowledge_base("support").await.unwrap(),
        kb,
        "get or create"
    );
    let other = db.knowledge_base("other").await.unwrap();
    assert_ne!(kb, other);

    let first = db
        .replace_document(
            kb,
            &document("faq/reset.md", "h1", &["one", "two", "three"]),
        )
        .await
        .unwrap();
    db.replace_document(
        kb,
        &document(
            "faq/login.md",
            "h2",
            &["<script>alert(1)</script> ' OR 1=1 --"],
        ),
    )
    .await
    .unwrap();
    db.replace_document(other, &document("faq/reset.md", "h9", &["elsewhere"]))
        .await
        .unwrap();

    let stored = db.document(kb, "faq/reset.md").await.unwrap().unwrap();
    assert_eq!(stored.id, first);
    assert_eq!(stored.content_hash, "h1");
    let chunks = db.chunks(kb).await.unwrap();
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "<script>alert(1)</script> ' OR 1=1 --",
            "one",
            "two",
            "three"
        ]
    );
    assert_eq!(chunks[1].heading_path, vec!["Chapter 1", "1.2 Reset"]);
    assert_eq!(chunks[1].title, "Title of faq/reset.md");

    // A changed document replaces its chunks and keeps its id.
    let again = db
        .replace_document(kb, &document("faq/reset.md", "h3", &["new"]))
        .await
        .unwrap();
    assert_eq!(again, first);
    let texts: Vec<String> = db
        .chunks(kb)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.text)
        .collect();
    assert_eq!(texts, vec!["<script>alert(1)</script> ' OR 1=1 --", "new"]);
    assert_eq!(
        db.document(kb, "faq/reset.md")
            .await
            .unwrap()
            .unwrap()
            .content_hash,
        "h3"
    );

    // Deleting removes the document and its chunks, only in its own knowledge base.
    assert!(db.delete_document(kb, "faq/reset.md").await.unwrap());
    assert!(!db.delete_document(kb, "faq/reset.md").await.unwrap());
    assert_eq!(db.documents(kb).await.unwrap().len(), 1);
    assert_eq!(db.chunks(other).await.unwrap().len(), 1);
    db.close().await;

    // Reconnecting (migrations already applied) finds everything again.
    let reopened = Database::connect(&test.url).await.unwrap();
    assert_eq!(reopened.chunks(kb).await.unwrap().len(), 1);
    reopened.close().await;
    test.drop_database().await;
}

async fn a_failed_replacement_changes_nothing(engine: Engine) {
    let test = TestDatabase::new(engine, "atomic").await;
    let db = Database::connect(&test.url).await.unwrap();
    let kb = db.knowledge_base("support").await.unwrap();
    db.replace_document(kb, &document("a.md", "h1", &["kept"]))
        .await
        .unwrap();
    // A knowledge base that does not exist violates the foreign key: the whole write fails.
    let err = db
        .replace_document(kb + 1000, &document("a.md", "h2", &["lost"]))
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Sql(_)), "{err}");
    let texts: Vec<String> = db
        .chunks(kb)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.text)
        .collect();
    assert_eq!(texts, vec!["kept"]);
    db.close().await;
    test.drop_database().await;
}

async fn sites_users_and_detached_conversations(engine: Engine) {
    let test = TestDatabase::new(engine, "sites").await;
    let db = Database::connect(&test.url).await.unwrap();
    let kb = db.knowledge_base("support").await.unwrap();
    assert_eq!(db.find_knowledge_base("support").await.unwrap(), Some(kb));
    assert_eq!(db.find_knowledge_base("nope").await.unwrap(), None);
    let origins = vec![
        "https://shop.example".to_string(),
        "http://localhost:3000".into(),
    ];
    let site = db
        .create_site("shop", "kefu_site_abc", &origins, kb)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(site.allowed_origins, origins);
    assert!(site.allows("https://shop.example") && !site.allows("https://shop.example.evil"));
    // A taken name is refused without touching the first site.
    assert!(
        db.create_site("shop", "kefu_site_other", &[], kb)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        db.site_by_key("kefu_site_abc").await.unwrap(),
        Some(site.clone())
    );
    assert_eq!(db.site_by_key("kefu_site_other").await.unwrap(), None);
    assert!(db.set_site_origins(site.id, &origins[..1]).await.unwrap());
    assert_eq!(
        db.site(site.id).await.unwrap().unwrap().allowed_origins,
        origins[..1]
    );
    let with_site = db
        .create_conversation(kb, "c1", "hash1", Some(site.id))
        .await
        .unwrap();
    assert_eq!(with_site.site_id, Some(site.id));
    let without = db
        .create_conversation(kb, "c2", "hash2", None)
        .await
        .unwrap();
    assert_eq!(without.site_id, None);
    assert_eq!(
        db.knowledge_bases().await.unwrap(),
        vec![(kb, "support".to_string(), 0)]
    );
    // Reviews are appended and the latest counts; one bad id stores none of a batch.
    let one = db
        .add_message(with_site.id, "assistant", "a", None)
        .await
        .unwrap();
    let two = db
        .add_message(with_site.id, "assistant", "b", None)
        .await
        .unwrap();
    assert_eq!(
        db.add_reviews(&[one.id, two.id], kefu_db::REJECTED, Some("bob"))
            .await
            .unwrap(),
        2
    );
    db.add_reviews(&[one.id], kefu_db::ACCEPTED, None)
        .await
        .unwrap();
    assert!(
        db.add_reviews(&[two.id, 999_999], kefu_db::ACCEPTED, None)
            .await
            .is_err()
    );
    assert!(db.add_reviews(&[one.id], "maybe", None).await.is_err());
    let reviews = db.reviews().await.unwrap();
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[&one.id].decision, kefu_db::ACCEPTED);
    assert_eq!(reviews[&one.id].reviewer, None);
    assert_eq!(reviews[&two.id].decision, kefu_db::REJECTED);
    assert_eq!(reviews[&two.id].reviewer.as_deref(), Some("bob"));
    // Deleting the site keeps its conversations, detached.
    assert!(db.delete_site(site.id).await.unwrap());
    assert!(!db.delete_site(site.id).await.unwrap());
    assert_eq!(db.conversation("c1").await.unwrap().unwrap().site_id, None);

    let ann = db.upsert_user("ann", "agent", "h").await.unwrap();
    db.upsert_user("bob", "admin", "h").await.unwrap();
    db.create_api_token("t", ann.id, "ci").await.unwrap();
    db.handoff(with_site.id, "taken", Some(ann.id), "agent")
        .await
        .unwrap();
    let names: Vec<String> = db
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["ann", "bob"]);
    assert!(db.delete_user(ann.id).await.unwrap());
    assert!(!db.delete_user(ann.id).await.unwrap());
    assert_eq!(db.api_token_user("t").await.unwrap(), None);
    assert_eq!(db.users().await.unwrap().len(), 1);
    db.close().await;
    test.drop_database().await;
}

/// Sessions and API tokens: a password reset ends both, expired sessions are purged, tokens
/// are listed by id and revoked one by one or per user.
async fn sessions_and_tokens(engine: Engine) {
    let test = TestDatabase::new(engine, "sessions").await;
    let db = Database::connect(&test.url).await.unwrap();
    db.ping().await.unwrap();
    let ann = db.upsert_user("ann", "agent", "h1").await.unwrap();
    let bob = db.upsert_user("bob", "admin", "h1").await.unwrap();
    let later = kefu_db::now_ms() + 60_000;
    db.create_session("ann-live", ann.id, "c", later)
        .await
        .unwrap();
    db.create_session("ann-old", ann.id, "c", kefu_db::now_ms() - 1)
        .await
        .unwrap();
    assert_eq!(db.purge_expired_sessions().await.unwrap(), 1);
    db.create_session("bob-live", bob.id, "c", later)
        .await
        .unwrap();
    assert_eq!(db.session_count().await.unwrap(), 2);
    // Starting a session purges the expired ones of everyone.
    db.create_session("bob-old", bob.id, "c", kefu_db::now_ms() - 1)
        .await
        .unwrap();
    db.create_session("bob-new", bob.id, "c", later)
        .await
        .unwrap();
    assert_eq!(db.session_count().await.unwrap(), 3);
    let hash_a = "a".repeat(64);
    let hash_b = "b".repeat(64);
    let hash_c = "c".repeat(64);
    db.create_api_token(&hash_a, ann.id, "ci").await.unwrap();
    db.create_api_token(&hash_b, bob.id, "ci").await.unwrap();
    db.create_api_token(&hash_c, bob.id, "backup")
        .await
        .unwrap();
    let listed = db.api_tokens().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|t| t.id.len() == kefu_db::TOKEN_ID_CHARS));
    assert_eq!(listed[0].user, "ann");
    // A reset of ann's password ends her sessions and tokens, not bob's.
    db.upsert_user("ann", "agent", "h2").await.unwrap();
    assert!(db.session("ann-live").await.unwrap().is_none());
    assert!(db.session("bob-live").await.unwrap().is_some());
    assert_eq!(db.api_token_user(&hash_a).await.unwrap(), None);
    assert!(db.api_token_user(&hash_b).await.unwrap().is_some());
    // Revoking: by id (a prefix of the hash), never by a short or non-hex prefix.
    assert_eq!(db.revoke_api_token("bbb").await.unwrap(), 0);
    assert_eq!(db.revoke_api_token("%").await.unwrap(), 0);
    assert_eq!(db.revoke_api_token(&"x".repeat(16)).await.unwrap(), 0);
    assert_eq!(db.revoke_api_token(&"b".repeat(16)).await.unwrap(), 1);
    assert_eq!(db.api_token_user(&hash_b).await.unwrap(), None);
    assert!(db.api_token_user(&hash_c).await.unwrap().is_some());
    assert_eq!(db.revoke_user_tokens(bob.id, Some("ci")).await.unwrap(), 0);
    assert_eq!(db.revoke_user_tokens(bob.id, None).await.unwrap(), 1);
    assert!(db.api_tokens().await.unwrap().is_empty());
    db.close().await;
    test.drop_database().await;
}

#[tokio::test]
async fn sqlite_ends_sessions_and_revokes_tokens() {
    sessions_and_tokens(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_ends_sessions_and_revokes_tokens() {
    sessions_and_tokens(Engine::Postgres).await;
}

/// Conversations found by the text of their messages, wildcards taken literally.
async fn conversation_search(engine: Engine) {
    let test = TestDatabase::new(engine, "search").await;
    let db = Database::connect(&test.url).await.unwrap();
    let kb = db.knowledge_base("support").await.unwrap();
    let parcel = db.create_conversation(kb, "s1", "h1", None).await.unwrap();
    db.add_message(parcel.id, "customer", "Where is my PARCEL?", None)
        .await
        .unwrap();
    let refund = db.create_conversation(kb, "s2", "h2", None).await.unwrap();
    db.add_message(refund.id, "customer", "退款要多久？ 100% sure_thing", None)
        .await
        .unwrap();
    db.add_message(
        refund.id,
        "assistant",
        "Five days for a parcel refund.",
        None,
    )
    .await
    .unwrap();
    let ids = |found: Vec<kefu_db::Conversation>| -> Vec<String> {
        found.into_iter().map(|c| c.public_id).collect()
    };
    assert_eq!(
        ids(db.search_conversations("parcel", 10).await.unwrap()),
        ["s2", "s1"]
    );
    assert_eq!(
        ids(db.search_conversations("parcel", 1).await.unwrap()),
        ["s2"]
    );
    assert_eq!(
        ids(db.search_conversations("退款", 10).await.unwrap()),
        ["s2"]
    );
    assert_eq!(
        ids(db.search_conversations("100%", 10).await.unwrap()),
        ["s2"]
    );
    assert!(db.search_conversations("1_0", 10).await.unwrap().is_empty());
    assert!(
        db.search_conversations("%parcel", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(db.search_conversations("e_t", 10).await.unwrap()),
        ["s2"]
    );
    db.close().await;
    test.drop_database().await;
}

#[tokio::test]
async fn sqlite_searches_conversations() {
    conversation_search(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_searches_conversations() {
    conversation_search(Engine::Postgres).await;
}

/// Versions, labels that move, and the job queue with its leases.
async fn registry_and_job_queue(engine: Engine) {
    let test = TestDatabase::new(engine, "registry").await;
    let db = Database::connect(&test.url).await.unwrap();
    let version = |id: &str, parent: Option<&str>| ModelVersion {
        id: id.into(),
        path: format!("registry/{id}/model.gguf"),
        parent_id: parent.map(str::to_string),
        job_id: None,
        report: "{}".into(),
        created_ms: 1,
    };
    db.register_version(&version("base", None)).await.unwrap();
    // Versions are immutable: registering an id again keeps the first record.
    let again = ModelVersion {
        path: "elsewhere".into(),
        ..version("base", None)
    };
    assert_eq!(
        db.register_version(&again).await.unwrap().path,
        "registry/base/model.gguf"
    );
    db.register_version(&version("v2", Some("base")))
        .await
        .unwrap();
    assert_eq!(
        db.rollback().await.unwrap(),
        None,
        "nothing to roll back to"
    );
    assert_eq!(db.promote("base").await.unwrap(), None);
    assert_eq!(db.promote("v2").await.unwrap().as_deref(), Some("base"));
    let label = |l: &'static str| {
        let db = db.clone();
        async move { db.labelled(l).await.unwrap().map(|v| v.id) }
    };
    assert_eq!(label(PRODUCTION).await.as_deref(), Some("v2"));
    assert_eq!(label(PREVIOUS).await.as_deref(), Some("base"));
    assert_eq!(
        db.rollback().await.unwrap(),
        Some(("v2".to_string(), "base".to_string()))
    );
    assert_eq!(label(PRODUCTION).await.as_deref(), Some("base"));
    assert_eq!(label(PREVIOUS).await.as_deref(), Some("v2"));
    db.set_label(CANDIDATE, "v2").await.unwrap();
    assert_eq!(db.labels().await.unwrap().len(), 3);
    assert_eq!(db.model_versions().await.unwrap().len(), 2);

    // One job at a time per model: a second trigger gets the queued one back.
    let first = db.enqueue_job("m", "admin", None).await.unwrap().unwrap();
    assert_eq!(first.status, JobStatus::Queued);
    let second = db.enqueue_job("m", "threshold", None).await.unwrap();
    assert_eq!(second.unwrap_err().id, first.id);
    let other_model = db.enqueue_job("other", "admin", None).await.unwrap();
    assert!(other_model.is_ok());
    assert!(db.cancel_job(other_model.unwrap().id).await.unwrap());

    // A worker claims it; a second worker finds nothing.
    let claimed = db.claim_job("w1", 60_000, 2).await.unwrap().unwrap();
    assert_eq!(
        (claimed.id, claimed.status, claimed.attempts),
        (first.id, JobStatus::Running, 1)
    );
    assert!(db.claim_job("w2", 60_000, 2).await.unwrap().is_none());
    assert!(
        db.heartbeat_job(first.id, "w1", 60_000, "{\"step\": 3}")
            .await
            .unwrap()
    );
    assert!(
        !db.heartbeat_job(first.id, "w2", 60_000, "{}")
            .await
            .unwrap()
    );
    assert_eq!(
        db.job(first.id).await.unwrap().unwrap().progress,
        "{\"step\": 3}"
    );

    // The worker dies: once its lease runs out, the job is queued again for another worker…
    assert!(db.heartbeat_job(first.id, "w1", -1, "{}").await.unwrap());
    let retried = db.claim_job("w2", -1, 2).await.unwrap().unwrap();
    assert_eq!((retried.id, retried.attempts), (first.id, 2));
    assert!(retried.error.unwrap().contains("lease"));
    // …and failed with a reason when its attempts are spent.
    assert!(db.claim_job("w3", 60_000, 2).await.unwrap().is_none());
    let failed = db.job(first.id).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(failed.error.unwrap().contains("no attempts left"));
    // The dead worker's late report changes nothing.
    assert!(!db.finish_job(first.id, "w2", Ok(Some("v3"))).await.unwrap());

    let next = db.enqueue_job("m", "admin", None).await.unwrap().unwrap();
    let claimed = db.claim_job("w1", 60_000, 2).await.unwrap().unwrap();
    assert_eq!(claimed.id, next.id);
    assert!(db.finish_job(next.id, "w1", Ok(Some("v2"))).await.unwrap());
    let done = db.last_succeeded_job("m").await.unwrap().unwrap();
    assert_eq!(
        (done.id, done.result_version.as_deref()),
        (next.id, Some("v2"))
    );
    assert_eq!(db.jobs(10).await.unwrap().len(), 3);
    assert_eq!(db.last_job("m").await.unwrap().unwrap().id, next.id);
    assert!(db.last_job("nobody").await.unwrap().is_none());

    // Automatic triggers: off until set, then kept per model and replaced as a whole.
    assert!(db.training_schedule("m").await.unwrap().is_off());
    let schedule = TrainingSchedule {
        every_minutes: Some(1440),
        after_new_feedback: Some(25),
    };
    db.set_training_schedule("m", &schedule).await.unwrap();
    assert_eq!(db.training_schedule("m").await.unwrap(), schedule);
    assert!(db.training_schedule("other").await.unwrap().is_off());
    let threshold_only = TrainingSchedule {
        every_minutes: None,
        after_new_feedback: Some(3),
    };
    db.set_training_schedule("m", &threshold_only)
        .await
        .unwrap();
    assert_eq!(db.training_schedule("m").await.unwrap(), threshold_only);
    db.close().await;
    test.drop_database().await;
}

#[tokio::test]
async fn sqlite_keeps_versions_labels_and_jobs() {
    registry_and_job_queue(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_keeps_versions_labels_and_jobs() {
    registry_and_job_queue(Engine::Postgres).await;
}

#[tokio::test]
async fn sqlite_keeps_sites_and_users() {
    sites_users_and_detached_conversations(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_keeps_sites_and_users() {
    sites_users_and_detached_conversations(Engine::Postgres).await;
}

#[tokio::test]
async fn sqlite_stores_documents_and_chunks() {
    documents_chunks_and_replacement(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_stores_documents_and_chunks() {
    documents_chunks_and_replacement(Engine::Postgres).await;
}

#[tokio::test]
async fn sqlite_failed_writes_change_nothing() {
    a_failed_replacement_changes_nothing(Engine::Sqlite).await;
}

#[tokio::test]
async fn postgres_failed_writes_change_nothing() {
    a_failed_replacement_changes_nothing(Engine::Postgres).await;
}

#[tokio::test]
async fn a_bad_url_is_a_clear_error() {
    let err = Database::connect("mysql://localhost/x").await.unwrap_err();
    assert!(matches!(err, DbError::UnsupportedUrl(_)));
    assert!(err.to_string().contains("sqlite://"));
    // A password in a URL never reaches a message.
    let err = Database::connect("mysql://kefu:hunter22@db.example/x")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter22"), "{err}");
    assert!(err.to_string().contains("kefu:***@db.example"), "{err}");
}

#[test]
fn passwords_are_redacted_from_urls() {
    use kefu_db::redact_url;
    assert_eq!(
        redact_url("postgres://kefu:s3cr@t@db:5432/kefu"),
        "postgres://kefu:***@db:5432/kefu"
    );
    assert_eq!(
        redact_url("postgres://db/kefu?user=kefu&password=s3cret&sslmode=require"),
        "postgres://db/kefu?user=kefu&password=***&sslmode=require"
    );
    assert_eq!(
        redact_url("postgres://kefu@db/kefu"),
        "postgres://kefu@db/kefu"
    );
    assert_eq!(
        redact_url("sqlite:///data/kefu.db?mode=rwc"),
        "sqlite:///data/kefu.db?mode=rwc"
    );
}
