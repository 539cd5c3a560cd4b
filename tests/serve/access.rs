//! Who may do what: the feedback inbox and datasets, every route with every caller.

use serde_json::{Value, json};

use crate::support::*;

/// The feedback inbox lists every rated answer with the pair it makes; filters narrow it; a
/// bulk review is all or none; a rejected answer's feedback leaves every dataset and comes back
/// when accepted; the datasets route previews the examples with their lineage.
#[test]
fn the_feedback_inbox_reviews_and_the_datasets_preview() {
    let staffed = staffed_server(&["--max-tokens", "4", "--trainer", "off"]);
    let server = &staffed.server;
    let admin = &staffed.admin_api;
    let (fixed, _, fixed_answer) = ask_anonymously(server, "Where is my parcel?");
    correct(
        server,
        &staffed.agent_api,
        &fixed,
        fixed_answer,
        "It is on its way.",
    );
    let rate = |question: &str, rating: &str| {
        let (id, token, answer) = ask_anonymously(server, question);
        let (status, body) = post(
            &server.url(&format!(
                "/api/conversations/{id}/messages/{answer}/feedback"
            )),
            Some(&token),
            json!({"rating": rating}).to_string().as_bytes(),
        );
        assert_eq!(status, 201, "{body}");
        answer
    };
    let liked = rate("Can I pay by card?", "up");
    let disliked = rate("Do you ship abroad?", "down");
    let inbox = |query: &str| {
        let (status, body) = request(
            "GET",
            &server.url(&format!("/api/admin/feedback{query}")),
            admin,
            None,
        );
        assert_eq!(status, 200, "{query}: {body}");
        body
    };
    let all = inbox("");
    assert_eq!(all["total"], 3, "{all}");
    let items = all["items"].as_array().unwrap();
    // Newest feedback first.
    let order: Vec<i64> = items
        .iter()
        .map(|i| i["message_id"].as_i64().unwrap())
        .collect();
    assert_eq!(order, vec![disliked, liked, fixed_answer]);
    let corrected = &items[2];
    assert_eq!(corrected["label"], "corrected");
    assert_eq!(corrected["question"], "Where is my parcel?");
    assert_eq!(corrected["pair"]["chosen"], "It is on its way.");
    assert_eq!(corrected["pair"]["rejected"], corrected["answer"]);
    assert_eq!(corrected["rater_role"], "agent");
    assert_eq!(corrected["review"], "pending");
    assert_eq!(
        (items[0]["label"].clone(), items[1]["label"].clone()),
        (json!("down"), json!("up"))
    );
    let ids = |body: &Value| -> Vec<i64> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["message_id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&inbox("?label=corrected")), vec![fixed_answer]);
    assert_eq!(ids(&inbox("?rater=customer")), vec![disliked, liked]);
    assert_eq!(ids(&inbox("?q=PAY+BY")), vec![liked]);
    assert_eq!(ids(&inbox("?review=pending&limit=1&offset=1")), vec![liked]);
    assert_eq!(inbox("?review=pending&limit=1")["total"], 3);
    for bad in [
        "?label=maybe",
        "?review=done",
        "?rater=bot",
        "?limit=0",
        "?limit=501",
        "?limit=ten",
        "?offset=-1",
        "?sort=new",
    ] {
        let (status, body) = request(
            "GET",
            &server.url(&format!("/api/admin/feedback{bad}")),
            admin,
            None,
        );
        assert_error((status, body), 400, "invalid_filter");
    }

    let counts = || {
        let (status, body) = request("GET", &server.url("/api/admin/datasets"), admin, None);
        assert_eq!(status, 200, "{body}");
        let c = &body["current"]["counts"];
        (
            c["sft"].as_i64().unwrap(),
            c["pairs"].as_i64().unwrap(),
            c["regression"].as_i64().unwrap(),
        )
    };
    // The customer's thumbs-up waits for the inbox (the default feedback policy); the agent's
    // correction counts at once.
    assert_eq!(counts(), (1, 1, 1));
    let (status, pairs) = request(
        "GET",
        &server.url("/api/admin/datasets/current?kind=pairs"),
        admin,
        None,
    );
    assert_eq!(status, 200, "{pairs}");
    assert_eq!(pairs["total"], 1);
    let example = &pairs["examples"][0];
    assert_eq!(example["chosen"][0]["content"], "It is on its way.");
    assert_eq!(example["kefu"]["rejected_message_id"], fixed_answer);

    let review = |body: Value| {
        request(
            "POST",
            &server.url("/api/admin/feedback/review"),
            admin,
            Some(&body),
        )
    };
    let (status, done) = review(json!({"message_ids": [fixed_answer], "decision": "reject"}));
    assert_eq!(
        (status, done["reviewed"].clone()),
        (200, json!(1)),
        "{done}"
    );
    assert_eq!(counts(), (0, 0, 0));
    assert_eq!(ids(&inbox("?review=rejected")), vec![fixed_answer]);
    assert_eq!(inbox("?review=rejected")["items"][0]["reviewer"], "boss");
    let (status, done) = review(json!({"message_ids": [liked], "decision": "accept"}));
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        counts(),
        (1, 0, 0),
        "accepted, the thumbs-up is an SFT example"
    );
    let (status, sft, _) = call(
        "GET",
        &server.url("/api/admin/export/sft"),
        admin,
        &Body::Empty,
    );
    assert_eq!(status, 200);
    // One JSON line parses as one object.
    assert!(sft["kefu"].is_object(), "one SFT example: {sft}");
    let (status, done) =
        review(json!({"message_ids": [fixed_answer, liked, liked], "decision": "accept"}));
    assert_eq!(
        (status, done["reviewed"].clone()),
        (200, json!(2)),
        "{done}"
    );
    assert_eq!(counts(), (2, 1, 1));

    // Bad reviews change nothing.
    let question_id = corrected["question_message_id"].as_i64().unwrap();
    for (body, status, code) in [
        (
            json!({"message_ids": [], "decision": "reject"}),
            400,
            "invalid_review",
        ),
        (
            json!({"message_ids": [liked], "decision": "maybe"}),
            400,
            "invalid_review",
        ),
        (
            json!({"message_ids": (1..=1001).collect::<Vec<i64>>(), "decision": "reject"}),
            400,
            "invalid_review",
        ),
        (
            json!({"message_ids": [liked, question_id, 999_999], "decision": "reject"}),
            404,
            "unknown_message",
        ),
        (
            json!({"message_ids": "all", "decision": "reject"}),
            422,
            "invalid_json",
        ),
        (
            json!({"message_ids": [liked], "decision": "reject", "extra": 1}),
            422,
            "invalid_json",
        ),
    ] {
        assert_error(review(body.clone()), status, code);
    }
    let (status, body, _) = call(
        "POST",
        &server.url("/api/admin/feedback/review"),
        admin,
        &Body::Raw(b"{not json"),
    );
    assert_eq!(
        (status, body["code"].clone()),
        (415, json!("unsupported_media_type")),
        "{body}"
    );
    assert_eq!(ids(&inbox("?review=rejected")), Vec::<i64>::new());
    assert_eq!(counts(), (2, 1, 1));
    let (status, body) = request(
        "POST",
        &server.url("/api/admin/feedback/review"),
        &staffed.agent_api,
        Some(&json!({"message_ids": [liked], "decision": "reject"})),
    );
    assert_eq!(status, 403, "{body}");

    for (path, status, code) in [
        (
            "/api/admin/datasets/current?kind=kto",
            400,
            "invalid_filter",
        ),
        ("/api/admin/datasets/current?limit=0", 400, "invalid_filter"),
        ("/api/admin/datasets/7", 404, "dataset_not_found"),
        ("/api/admin/datasets/-1", 404, "dataset_not_found"),
        ("/api/admin/datasets/..%2Fkefu.db", 404, "dataset_not_found"),
    ] {
        let (s, body) = request("GET", &server.url(path), admin, None);
        assert_error((s, body), status, code);
    }
}

/// Every route of the OpenAPI document with every kind of caller: anonymous, the widget
/// customer of the conversation (site key, from the site's origin), another customer, an
/// agent and an admin signed in (cookie + CSRF token), and an agent's and an admin's API token.
#[test]
fn every_route_with_every_caller() {
    let staffed = staffed_server(&["--max-tokens", "4", "--trainer", "off"]);
    let server = &staffed.server;
    let (_, site_key) = add_site(&staffed, "shop", &[SHOP]);
    let guide: &'static [u8] = b"# Returns\n\nParcels can be returned within 30 days.";
    let (status, uploaded, _) = call(
        "POST",
        &server.url("/api/admin/knowledge-bases/default/documents?name=returns.md"),
        &staffed.admin_api,
        &Body::Raw(guide),
    );
    assert_eq!(status, 201, "{uploaded}");
    let document = uploaded["id"].as_i64().unwrap();

    let widget: Identity = vec![("x-kefu-site", site_key.clone()), ("origin", SHOP.into())];
    let (status, mine, _) = call(
        "POST",
        &server.url("/api/conversations"),
        &widget,
        &Body::Empty,
    );
    assert_eq!(status, 201, "{mine}");
    assert_eq!(mine["site"], "shop");
    let id = mine["id"].as_str().unwrap().to_string();
    let mut customer = widget.clone();
    customer.push((
        "authorization",
        format!("Bearer {}", mine["customer_token"].as_str().unwrap()),
    ));
    let (_, events) = post_sse(
        &server.url(&format!("/api/conversations/{id}/messages")),
        Some(mine["customer_token"].as_str().unwrap()),
        &json!({"content": "How long do I have to return a parcel?"}),
    );
    let done: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    let answer = done["message_id"].as_i64().unwrap();
    let (_, theirs, _) = call(
        "POST",
        &server.url("/api/conversations"),
        &vec![],
        &Body::Empty,
    );
    let stranger: Identity = vec![(
        "authorization",
        format!("Bearer {}", theirs["customer_token"].as_str().unwrap()),
    )];
    let (_, spare) = request(
        "POST",
        &server.url("/api/admin/sites"),
        &staffed.admin_api,
        Some(&json!({"name": "spare", "allowed_origins": ["http://spare.test"]})),
    );
    let spare = spare["id"].as_i64().unwrap();
    // A token for the revoke route to remove (the callers' own tokens stay).
    let made = kefu(staffed._home.path(), None)
        .args(["tokens", "add", "ann", "--label", "spare"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let (_, tokens) = request(
        "GET",
        &server.url("/api/admin/tokens"),
        &staffed.admin_api,
        None,
    );
    let spare_token = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "spare")
        .expect("the spare token is listed")["id"]
        .as_str()
        .unwrap()
        .to_string();

    let callers: [(&str, &Identity); 7] = [
        ("anonymous", &vec![]),
        ("customer", &customer),
        ("other customer", &stranger),
        ("agent", &staffed.ann),
        ("admin", &staffed.boss),
        ("agent API token", &staffed.agent_api),
        ("admin API token", &staffed.admin_api),
    ];
    let all = |status: u16| [status; 7];
    let own = |status: u16| [401, status, 404, 401, 401, 404, 404];
    let staff = |status: u16| [401, 401, 401, status, status, status, status];
    // Admin-only routes; the admin token runs after the admin (a second delete finds nothing).
    let admins = |first: u16, second: u16| [401, 401, 401, 403, first, 403, second];
    let question = json!({"content": "And with the prepaid label?"});
    let (_, ready, _) = call("GET", &server.url("/readyz"), &vec![], &Body::Empty);
    let serving = ready["model_version"].as_str().unwrap().to_string();
    let routes: Vec<(&str, String, Body, [u16; 7])> = vec![
        ("GET", "/healthz".into(), Body::Empty, all(200)),
        ("GET", "/readyz".into(), Body::Empty, all(200)),
        ("GET", "/metrics".into(), Body::Empty, all(200)),
        ("GET", "/api/openapi.json".into(), Body::Empty, all(200)),
        ("GET", "/api/widget/site".into(), Body::Empty, all(200)),
        ("POST", "/api/conversations".into(), Body::Empty, all(201)),
        (
            "GET",
            format!("/api/conversations/{id}/messages"),
            Body::Empty,
            own(200),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/messages"),
            Body::Json(question),
            own(200),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/messages/{answer}/regenerate"),
            Body::Empty,
            own(200),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/messages/{answer}/feedback"),
            Body::Json(json!({"rating": "down", "reasons": ["wrong"]})),
            own(201),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/handoff"),
            Body::Empty,
            own(200),
        ),
        // Nothing is being written now: the owner's stop is a 409.
        (
            "POST",
            format!("/api/conversations/{id}/stop"),
            Body::Empty,
            own(409),
        ),
        (
            "GET",
            format!("/api/conversations/{id}/events"),
            Body::Empty,
            own(200),
        ),
        (
            "POST",
            "/api/auth/login".into(),
            Body::Json(json!({"name": "ann", "password": "correct horse battery"})),
            all(200),
        ),
        (
            "GET",
            "/api/agent/conversations".into(),
            Body::Empty,
            staff(200),
        ),
        ("GET", "/api/agent/events".into(), Body::Empty, staff(200)),
        (
            "GET",
            format!("/api/agent/conversations/{id}"),
            Body::Empty,
            staff(200),
        ),
        (
            "GET",
            format!("/api/agent/conversations/{id}/export?format=json"),
            Body::Empty,
            staff(200),
        ),
        (
            "POST",
            format!("/api/agent/conversations/{id}/messages/{answer}/feedback"),
            Body::Json(json!({"rating": "down", "corrected_answer": "Within 30 days."})),
            staff(201),
        ),
        (
            "POST",
            format!("/api/agent/conversations/{id}/takeover"),
            Body::Empty,
            staff(200),
        ),
        (
            "POST",
            format!("/api/agent/conversations/{id}/reply"),
            Body::Json(json!({"content": "Hello, a person here."})),
            staff(201),
        ),
        (
            "POST",
            format!("/api/agent/conversations/{id}/release"),
            Body::Empty,
            staff(200),
        ),
        (
            "GET",
            "/api/admin/users".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            "/api/admin/users".into(),
            Body::Json(json!({"name": "temp", "role": "agent", "password": "long enough pass"})),
            admins(201, 201),
        ),
        (
            "DELETE",
            "/api/admin/users/temp".into(),
            Body::Empty,
            admins(204, 404),
        ),
        (
            "GET",
            "/api/admin/tokens".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "DELETE",
            format!("/api/admin/tokens/{spare_token}"),
            Body::Empty,
            admins(204, 404),
        ),
        (
            "GET",
            "/api/admin/sites".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            "/api/admin/sites".into(),
            Body::Json(json!({"name": "blog", "allowed_origins": ["https://blog.test"]})),
            admins(201, 409),
        ),
        (
            "PUT",
            format!("/api/admin/sites/{spare}"),
            Body::Json(json!({"allowed_origins": ["http://spare.test", "http://b.test"]})),
            admins(204, 204),
        ),
        (
            "DELETE",
            format!("/api/admin/sites/{spare}"),
            Body::Empty,
            admins(204, 404),
        ),
        (
            "GET",
            "/api/admin/knowledge-bases".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/models".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            format!("/api/admin/models/{serving}/promote"),
            Body::Empty,
            admins(200, 200),
        ),
        // One version only: nothing to roll back to.
        (
            "POST",
            "/api/admin/models/rollback".into(),
            Body::Empty,
            admins(409, 409),
        ),
        // No worker runs here (`--trainer off`): the job stays queued.
        (
            "POST",
            "/api/admin/training/jobs".into(),
            Body::Empty,
            admins(202, 409),
        ),
        (
            "GET",
            "/api/admin/training/jobs".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/training/jobs/1".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            "/api/admin/training/jobs/1/cancel".into(),
            Body::Empty,
            admins(200, 409),
        ),
        (
            "GET",
            "/api/admin/training/schedule".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "PUT",
            "/api/admin/training/schedule".into(),
            Body::Json(json!({"every_minutes": 1440, "after_new_feedback": null})),
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/feedback?label=down".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            "/api/admin/feedback/review".into(),
            Body::Json(json!({"message_ids": [answer], "decision": "accept"})),
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/datasets".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/datasets/current?kind=pairs".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/knowledge-bases/default/documents".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            "/api/admin/knowledge-bases/default/documents?name=faq.md".into(),
            Body::Raw(b"# FAQ\n\nOrders ship within two days."),
            admins(201, 200),
        ),
        (
            "POST",
            format!("/api/admin/knowledge-bases/default/documents/{document}/reingest"),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "DELETE",
            format!("/api/admin/knowledge-bases/default/documents/{document}"),
            Body::Empty,
            admins(204, 404),
        ),
        (
            "GET",
            "/api/admin/export/pairs".into(),
            Body::Empty,
            admins(200, 200),
        ),
        ("GET", "/v1/models".into(), Body::Empty, staff(200)),
        (
            "POST",
            "/v1/chat/completions".into(),
            Body::Json(json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})),
            staff(200),
        ),
        // Last: signing out ends the agent's and the admin's sessions.
        ("POST", "/api/auth/logout".into(), Body::Empty, staff(200)),
    ];

    // The table covers every operation the OpenAPI document describes, and nothing else.
    let (_, document_json) = get(&server.url("/api/openapi.json"), None);
    let mut described: Vec<String> = Vec::new();
    for (path, operations) in document_json["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            described.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    let placeholder = |path: &str| {
        let path = path.split('?').next().unwrap();
        path.replace(&id, "{id}")
            .replace(&format!("/{answer}/"), "/{message}/")
            .replace(&format!("/documents/{document}"), "/documents/{document}")
            .replace("/default/", "/{kb}/")
            .replace("/users/temp", "/users/{name}")
            .replace(&format!("/tokens/{spare_token}"), "/tokens/{token}")
            .replace(&format!("/sites/{spare}"), "/sites/{site}")
            .replace("/export/pairs", "/export/{kind}")
            .replace(&format!("/models/{serving}/"), "/models/{version}/")
            .replace("/training/jobs/1", "/training/jobs/{job}")
            .replace("/datasets/current", "/datasets/{dataset}")
    };
    let mut tested: Vec<String> = routes
        .iter()
        .map(|(m, p, _, _)| format!("{m} {}", placeholder(p)))
        .collect();
    described.sort();
    tested.sort();
    tested.dedup();
    assert_eq!(tested, described);

    for (method, path, body, expected) in &routes {
        for ((who, identity), want) in callers.iter().zip(expected) {
            let (status, answer, _) = call(method, &server.url(path), identity, body);
            assert_eq!(status, *want, "{method} {path} as {who}: {answer}");
            if status >= 400 {
                assert!(
                    answer["code"].is_string(),
                    "{method} {path} as {who}: {answer}"
                );
            }
        }
    }
}

/// Staff find conversations by the text of their messages and export them as Markdown or JSON;
/// bad parameters are 400s.
#[test]
fn transcripts_are_searched_and_exported() {
    let staffed = staffed_server(&["--max-tokens", "8", "--trainer", "off"]);
    let server = &staffed.server;
    let agent = &staffed.agent_api;
    let (parcel, _, _) = ask_anonymously(server, "Where is my parcel 4711?");
    let (refund, _, _) = ask_anonymously(server, "退款要多久？");
    let found = |q: &str| -> Vec<String> {
        let url = server.url(&format!("/api/agent/conversations?q={q}"));
        let (status, body) = request("GET", &url, agent, None);
        assert_eq!(status, 200, "{body}");
        body["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(found("PARCEL%204711"), [parcel.as_str()]);
    assert_eq!(found("%E9%80%80%E6%AC%BE"), [refund.as_str()]); // 退款
    assert!(found("nothing-like-this").is_empty());
    for bad in ["q=", "q=%20%20", "query=parcel"] {
        let url = server.url(&format!("/api/agent/conversations?{bad}"));
        assert_error(request("GET", &url, agent, None), 400, "invalid_filter");
    }
    let export = |query: &str| {
        let mut response = kefu_tests::http_agent()
            .get(&server.url(&format!("/api/agent/conversations/{parcel}/export{query}")))
            .header("authorization", agent[0].1.as_str())
            .call()
            .unwrap();
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let (kind, disposition) = (header("content-type"), header("content-disposition"));
        (
            status,
            kind,
            disposition,
            response.body_mut().read_to_string().unwrap(),
        )
    };
    let (status, kind, disposition, markdown) = export("");
    assert_eq!(status, 200, "{markdown}");
    assert!(kind.starts_with("text/markdown"), "{kind}");
    assert!(
        disposition.contains(&format!("conversation-{parcel}.md")),
        "{disposition}"
    );
    assert!(
        markdown.starts_with(&format!("# Conversation {parcel}")),
        "{markdown}"
    );
    assert!(markdown.contains("## Customer ("), "{markdown}");
    assert!(markdown.contains("Where is my parcel 4711?"), "{markdown}");
    assert!(markdown.contains("## Assistant ("), "{markdown}");
    let (status, kind, _, json) = export("?format=json");
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/json"), "{kind}");
    let transcript: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(transcript["id"], parcel.as_str());
    assert_eq!(transcript["messages"].as_array().unwrap().len(), 2);
    let (status, _, _, body) = export("?format=pdf");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_format"), "{body}");
    let url = server.url("/api/agent/conversations/no-such-thing/export");
    assert_error(
        request("GET", &url, agent, None),
        404,
        "conversation_not_found",
    );
    // Customers cannot export.
    let url = server.url(&format!("/api/agent/conversations/{parcel}/export"));
    let (status, _) = request("GET", &url, &vec![], None);
    assert_eq!(status, 401);
}
