//! Agents' corrections answer the next customer at once: a corrected answer becomes a document
//! of the knowledge base (the question as its title), replaced by a later correction, rebuilt
//! by re-ingesting, removed when the answer is rejected in the feedback inbox — and nothing of
//! the kind with `--corrections-to-knowledge false`.

use serde_json::{Value, json};

use crate::support::*;

const DOCUMENTS: &str = "/api/admin/knowledge-bases/default/documents";

fn cites(done: &Value, title: &str) -> bool {
    done["citations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["title"] == title)
}

#[test]
fn an_agent_s_correction_answers_the_next_customer_at_once() {
    // The product's default model and abstention settings.
    let staffed = staffed_server(&[
        "--trainer",
        "off",
        "--max-tokens",
        "40",
        "--min-support",
        "0.5",
        PRODUCT_DEFAULT,
    ]);
    let server = &staffed.server;
    let question = "What colour is the office cat of Kefu Ltd?";
    // An empty knowledge base: the question is declined without a passage.
    let (id, _, done, _) = ask_for_done(server, question);
    assert!(done["citations"].as_array().unwrap().is_empty(), "{done}");
    assert_eq!(done["abstained"], true, "{done}");
    let answer = done["message_id"].as_i64().unwrap();

    // A first correction, then a better one: one document, holding the latest.
    let first = correct(
        &staffed.server,
        &staffed.agent_api,
        &id,
        answer,
        "The cat is black.",
    );
    let key = format!("correction:{answer}");
    assert_eq!(first["knowledge_document"], key.as_str(), "{first}");
    correct(
        &staffed.server,
        &staffed.agent_api,
        &id,
        answer,
        "The office cat of Kefu Ltd is orange and is called Marmalade.",
    );
    let stored = documents(&staffed.server, &staffed.admin_api);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["path"], key.as_str());
    assert_eq!(stored[0]["title"], question);
    assert_eq!(stored[0]["language"], "en");

    // The next customer is answered from it, with the real default model.
    let (_, _, done, text) = ask_for_done(server, question);
    assert_eq!(done["abstained"], false, "{done}");
    assert!(cites(&done, question), "{done}");
    assert!(text.to_lowercase().contains("orange"), "{text} {done}");
    assert!(!text.to_lowercase().contains("black"), "{text}");

    // Re-ingesting rebuilds it from the stored correction.
    let document = stored[0]["id"].as_i64().unwrap();
    let (status, body) = request(
        "POST",
        &server.url(&format!("{DOCUMENTS}/{document}/reingest")),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 200, "{body}");

    // A Chinese correction is a Chinese document.
    let (zh_id, _, zh_done, _) = ask_for_done(server, "办公室的猫叫什么名字？");
    let zh_answer = zh_done["message_id"].as_i64().unwrap();
    let zh = correct(
        &staffed.server,
        &staffed.agent_api,
        &zh_id,
        zh_answer,
        "办公室的猫叫橘子酱，是橙色的。",
    );
    assert_eq!(
        zh["knowledge_document"],
        format!("correction:{zh_answer}").as_str()
    );
    let stored = documents(&staffed.server, &staffed.admin_api);
    let chinese = stored
        .iter()
        .find(|d| d["title"] == "办公室的猫叫什么名字？")
        .unwrap_or_else(|| panic!("{stored:?}"));
    assert_eq!(chinese["language"], "zh", "{chinese}");

    // Rejecting the English answer in the inbox takes its correction out of the knowledge base.
    let (status, reviewed) = request(
        "POST",
        &server.url("/api/admin/feedback/review"),
        &staffed.admin_api,
        Some(&json!({"message_ids": [answer], "decision": "reject"})),
    );
    assert_eq!(status, 200, "{reviewed}");
    assert_eq!(reviewed["knowledge_documents_removed"], 1, "{reviewed}");
    let stored = documents(&staffed.server, &staffed.admin_api);
    assert!(
        stored.iter().all(|d| d["path"] != key.as_str()),
        "{stored:?}"
    );
    let (_, _, done, _) = ask_for_done(server, question);
    assert!(!cites(&done, question), "{done}");
    assert_eq!(done["abstained"], true, "{done}");
    // Its re-ingest route is gone with it; a deleted correction's answer cannot be rebuilt.
    let (status, body) = request(
        "POST",
        &server.url(&format!("{DOCUMENTS}/{document}/reingest")),
        &staffed.admin_api,
        None,
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("document_not_found"))
    );
}

#[test]
fn corrections_stay_out_of_the_knowledge_base_when_turned_off() {
    let staffed = staffed_server(&[
        "--trainer",
        "off",
        "--max-tokens",
        "8",
        "--corrections-to-knowledge",
        "false",
    ]);
    let (id, _, done, _) = ask_for_done(&staffed.server, "Where is the office of Kefu Ltd?");
    let answer = done["message_id"].as_i64().unwrap();
    let body = correct(
        &staffed.server,
        &staffed.agent_api,
        &id,
        answer,
        "In Hangzhou.",
    );
    assert!(body["knowledge_document"].is_null(), "{body}");
    assert!(body["id"].as_i64().is_some(), "{body}");
    assert!(documents(&staffed.server, &staffed.admin_api).is_empty());
    // A flag value that is not a boolean is refused before anything starts.
    let home = tempfile::tempdir().unwrap();
    let out = kefu(home.path(), None)
        .args(["serve", "--corrections-to-knowledge", "maybe"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--corrections-to-knowledge"), "{stderr}");
}
