//! The same storage scenarios against the real engines: an SQLite file and PostgreSQL on
//! 127.0.0.1:5432 (a fresh database per test, dropped afterwards; `KEFU_TEST_POSTGRES` names
//! another server).

use kefu_db::{Database, DbError, Engine, NewChunk, NewDocument};

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
}
