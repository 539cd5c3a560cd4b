//! Abstention: questions the documents do not answer get "I don't have that information" and
//! a person, through the widget API.

use kefu_tests::{shared, test_home};
use serde_json::json;

use crate::support::*;

/// The assistant says it does not know instead of inventing, in the customer's language, and
/// offers a person: questions the Debian FAQ does not answer (a shop's refund, in English and
/// Chinese) are answered by the abstention reply without generating (`abstained` in the `done`
/// event, the reply stored as the answer), the hand-off then works; an empty knowledge base
/// abstains on every question.
#[test]
fn questions_the_documents_do_not_answer_get_an_abstention_and_a_person() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let ingest = kefu(home.path(), None)
        .args(["ingest", &shared("kb/en/debian-faq")])
        .output()
        .unwrap();
    assert!(
        ingest.status.success(),
        "{}",
        String::from_utf8_lossy(&ingest.stderr)
    );
    // The real default model: whether it answers from the passages is the point.
    let server = Server::start(
        home.path(),
        None,
        &["--min-support", "0.5", PRODUCT_DEFAULT],
    );
    for (question, words) in [
        (
            "Can I get a refund for the running shoes I ordered last week?",
            "connect you with a person",
        ),
        ("我上周买的跑鞋可以退款吗？", "人工客服"),
    ] {
        let (id, token, done, streamed) = ask_for_done(&server, question);
        assert_eq!(done["abstained"], true, "{question}: {done}");
        assert_eq!(done["abstention_reason"], "no_relevant_passage", "{done}");
        assert!(streamed.contains(words), "{question}: {streamed}");
        assert_eq!(done["replacement"], streamed.as_str(), "{done}");
        assert_eq!(done["citations"], json!([]), "{done}");
        let (status, messages) = get(
            &server.url(&format!("/api/conversations/{id}/messages")),
            Some(&token),
        );
        assert_eq!(status, 200, "{messages}");
        let stored = messages["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(stored["content"], streamed.as_str(), "{messages}");
        let (status, handoff) = post(
            &server.url(&format!("/api/conversations/{id}/handoff")),
            Some(&token),
            b"{}",
        );
        assert!(status < 300, "{status} {handoff}");
    }
    // An answerable question is answered from its passages, cited, and the support check
    // keeps the default model's answer.
    let (_, _, done, streamed) = ask_for_done(
        &server,
        "Which Debian distribution (stable/testing/unstable) is better for me?",
    );
    eprintln!("answerable: {streamed:?}");
    assert_eq!(done["abstained"], false, "{done}");
    assert!(streamed.contains("stable"), "{streamed}");
    assert!(!done["citations"].as_array().unwrap().is_empty(), "{done}");
    drop(server);

    let empty = Server::start(
        home.path(),
        None,
        &["--min-support", "0.5", "--kb", "empty"],
    );
    let (_, _, done, streamed) = ask_for_done(&empty, "What is Debian?");
    assert_eq!(done["abstained"], true, "{done}");
    assert_eq!(done["abstention_reason"], "no_relevant_passage", "{done}");
    assert!(
        streamed.contains("I don't have that information"),
        "{streamed}"
    );
}
