//! Disk retention: old jobs' training outputs are removed except the newest, the running ones
//! and every labelled version's lineage; imports never leave files in `registry/incoming/`,
//! even when they fail or an earlier importer was killed.

use kefu_db::{Database, ModelVersion};
use kefu_model::Architecture;
use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_trainer::registry::{import, prune_job_folders, registry_dir};

fn version(id: &str, job: i64, parent: Option<&str>) -> ModelVersion {
    ModelVersion {
        id: id.into(),
        path: format!("{id}/model.gguf"),
        parent_id: parent.map(str::to_string),
        job_id: Some(job),
        report: "{}".into(),
        created_ms: kefu_db::now_ms(),
    }
}

#[test]
fn old_training_outputs_go_and_labelled_lineage_stays() {
    let home = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("sqlite://{}", home.path().join("kefu.db").display());
        let database = Database::connect(&url).await.unwrap();
        // Job 1 is still queued; version a (job 2, production) descends from b (job 3);
        // c (job 4) has no label.
        let queued = database
            .enqueue_job("m", "admin", None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(queued.id, 1);
        database
            .register_version(&version("b", 3, None))
            .await
            .unwrap();
        database
            .register_version(&version("a", 2, Some("b")))
            .await
            .unwrap();
        database
            .register_version(&version("c", 4, Some("a")))
            .await
            .unwrap();
        database.set_label(kefu_db::PRODUCTION, "a").await.unwrap();
        for job in 1..=8 {
            let folder = home.path().join("jobs").join(job.to_string());
            std::fs::create_dir_all(folder.join("train/checkpoint")).unwrap();
            std::fs::create_dir_all(folder.join("data")).unwrap();
            std::fs::write(folder.join("train/checkpoint/adapter.safetensors"), b"x").unwrap();
            std::fs::write(folder.join("data/sft.jsonl"), b"{}\n").unwrap();
        }
        let removed = prune_job_folders(home.path(), &database, 2).await.unwrap();
        assert_eq!(removed, vec![6, 5, 4]);
        for job in 1..=8 {
            let folder = home.path().join("jobs").join(job.to_string());
            assert_eq!(
                folder.join("train").exists(),
                !removed.contains(&job),
                "job {job}"
            );
            assert!(
                folder.join("data/sft.jsonl").exists(),
                "job {job}'s data stays"
            );
        }
        // Nothing more to remove the second time; no jobs folder at all is fine too.
        assert!(
            prune_job_folders(home.path(), &database, 2)
                .await
                .unwrap()
                .is_empty()
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(
            prune_job_folders(empty.path(), &database, 2)
                .await
                .unwrap()
                .is_empty()
        );
        database.close().await;
    });
}

#[test]
fn imports_leave_nothing_in_incoming() {
    let home = tempfile::tempdir().unwrap();
    let incoming = registry_dir(home.path()).join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    // What a killed importer (a process id that is not running) left behind.
    std::fs::write(incoming.join("999999999.gguf"), b"half a model").unwrap();
    std::fs::write(incoming.join("999999999.partial.1.2"), b"half").unwrap();
    // A file that is not a model fails to import and leaves nothing.
    let bad = home.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF but not really a model").unwrap();
    assert!(import(home.path(), &bad, None, None).is_err());
    let left: Vec<_> = std::fs::read_dir(&incoming).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let models = tempfile::tempdir().unwrap();
    let good = write_tiny_gguf(models.path(), &TinySpec::new(Architecture::Qwen2));
    let version = import(home.path(), &good, None, None).unwrap();
    assert!(registry_dir(home.path()).join(&version.path).is_file());
    assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0);
}
