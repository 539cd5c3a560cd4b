//! The agent console's search and transcript export, run by the browser test on a console in
//! Chinese: a text no message has lists nothing and says so, words a customer wrote (in other
//! case) find that conversation alone, and both export links download the transcript.

use serde_json::{Value, json};

use crate::driver::Browser;

pub(crate) fn search_and_export(console: &Browser, conversation: &Value, question: &str) {
    console.type_into("#search-text", "zzqx-nothing-here");
    let none = console.wait(
        "the empty search",
        10,
        "const n = document.querySelector('#search-none');
         return !n.hidden && !document.querySelector('#conversations button') && n.textContent",
    );
    assert_eq!(none, json!("没有会话包含“zzqx-nothing-here”。"));
    console.js(
        "const s = document.querySelector('#search-text'); s.value = 'UPGRADE a debian';
         s.dispatchEvent(new Event('input'));",
        json!([]),
    );
    let found = console.wait(
        "the conversation found by its text",
        10,
        "const b = document.querySelectorAll('#conversations button');
         return document.querySelector('#search-none').hidden && b.length === 1 && b[0].getAttribute('data-id')",
    );
    assert_eq!(&found, conversation, "searched case-insensitively");
    console.js(
        "window.__export = null;
         Promise.all(['#export-md', '#export-json'].map(s => {
           const a = document.querySelector(s);
           return fetch(a.href).then(r => Promise.all([a.textContent, a.hasAttribute('download'), r.status,
             r.headers.get('content-type'), r.text()]));
         })).then(x => { window.__export = x; });",
        json!([]),
    );
    let exported = console.wait("the exported transcript", 10, "return window.__export");
    let markdown = &exported[0];
    assert_eq!(markdown[0], "导出为 Markdown");
    assert_eq!(markdown[1], true);
    assert_eq!(markdown[2], 200);
    assert!(markdown[3].as_str().unwrap().starts_with("text/markdown"));
    assert!(
        markdown[4].as_str().unwrap().contains(question),
        "{markdown}"
    );
    let as_json = &exported[1];
    assert_eq!(as_json[0], "导出为 JSON");
    assert_eq!(as_json[2], 200);
    let exported_json: serde_json::Value =
        serde_json::from_str(as_json[4].as_str().unwrap()).unwrap();
    assert!(
        exported_json["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "agent"
                && m["content"].as_str().unwrap().contains("Ann from support")),
        "{exported_json}"
    );
}
