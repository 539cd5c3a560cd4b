//! The in-process Qdrant store: filtered nearest-neighbour search per knowledge base, delete by
//! document, the same results after `optimize()` and after closing and reopening the folder.

use kefu_rag::vector::{EdgeStore, VectorError, VectorPoint, VectorStore};

/// Deterministic pseudo-random unit vectors.
fn vector(seed: u64, dimension: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..dimension)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn points(dimension: usize) -> Vec<VectorPoint> {
    (0..300u64)
        .map(|i| VectorPoint {
            id: i + 1,
            vector: vector(i, dimension),
            knowledge_base_id: if i < 200 { 1 } else { 2 },
            document_id: (i / 10) as i64,
            language: "en".into(),
        })
        .collect()
}

fn ids(store: &EdgeStore, query: &[f32], kb: i64) -> Vec<u64> {
    store
        .search(query, kb, 5)
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect()
}

#[test]
fn search_is_filtered_by_knowledge_base_and_survives_optimize_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vectors");
    let dimension = 64;
    let all = points(dimension);
    let store = EdgeStore::open(&path, dimension).unwrap();
    store.upsert(&all).unwrap();

    // The nearest point to a stored vector is that point, within its knowledge base only.
    let hits = store.search(&all[42].vector, 1, 5).unwrap();
    assert_eq!(hits[0].id, 43);
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let other = ids(&store, &all[42].vector, 2);
    assert!(other.iter().all(|id| *id > 200), "{other:?}");

    let before = ids(&store, &all[7].vector, 1);
    store.optimize().unwrap();
    assert_eq!(
        ids(&store, &all[7].vector, 1),
        before,
        "the same after building the index"
    );

    // Deleting a document removes its chunks' vectors.
    assert_eq!(store.count_document(4).unwrap(), 10);
    store.delete_document(4).unwrap(); // ids 41..=50
    assert_eq!(store.count_document(4).unwrap(), 0);
    assert_eq!(store.count_document(5).unwrap(), 10);
    let after_delete = ids(&store, &all[42].vector, 1);
    assert!(
        after_delete.iter().all(|id| !(41..=50).contains(id)),
        "{after_delete:?}"
    );
    store.flush().unwrap();
    drop(store);

    let reopened = EdgeStore::open(&path, dimension).unwrap();
    assert_eq!(
        ids(&reopened, &all[42].vector, 1),
        after_delete,
        "the same after a restart"
    );
    assert_eq!(ids(&reopened, &all[7].vector, 1), before);

    let err = reopened.search(&[1.0, 0.0], 1, 5).unwrap_err();
    assert!(matches!(
        err,
        VectorError::Dimension {
            expected: 64,
            actual: 2
        }
    ));
}
