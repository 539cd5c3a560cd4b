//! Widget sites and their origins; rate limits.

use kefu_tests::http_agent as agent;
use serde_json::{Value, json};

use crate::support::*;

/// Widget site keys and allowed origins: the right key from an allowed origin works (with
/// CORS headers); a wrong key, a disallowed origin, another site's key and a foreign page
/// without a key are refused with a JSON code, and nothing stored changes.
#[test]
fn widget_sites_admit_only_their_origins() {
    let staffed = staffed_server(&["--max-tokens", "4"]);
    let server = &staffed.server;
    let (_, key) = add_site(&staffed, "shop", &[SHOP, "http://localhost:3000"]);
    let (_, other_key) = add_site(&staffed, "blog", &["https://blog.test"]);
    let url = server.url("/api/conversations");
    let from = |origin: &str, key: &str| -> Identity {
        vec![("origin", origin.into()), ("x-kefu-site", key.into())]
    };

    // A preflight from an allowed origin gets CORS headers; from another, a JSON refusal.
    let mut response = agent()
        .run(
            ureq::http::Request::builder()
                .method("OPTIONS")
                .uri(&url)
                .header("origin", SHOP)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type, x-kefu-site",
                )
                .body(())
                .unwrap(),
        )
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let header = |r: &ureq::http::Response<ureq::Body>, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some(SHOP)
    );
    assert!(
        header(&response, "access-control-allow-headers")
            .unwrap()
            .contains("x-kefu-site")
    );
    let _ = response.body_mut().read_to_string();
    let (status, refused, _) = call(
        "OPTIONS",
        &url,
        &vec![("origin", "http://evil.test".into())],
        &Body::Empty,
    );
    assert_eq!(
        (status, refused["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );

    // The right key from an allowed origin.
    let mut response = agent()
        .run(
            ureq::http::Request::builder()
                .method("POST")
                .uri(&url)
                .header("origin", SHOP)
                .header("x-kefu-site", &key)
                .body(())
                .unwrap(),
        )
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some(SHOP)
    );
    let opened: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    let id = opened["id"].as_str().unwrap().to_string();
    let token = opened["customer_token"].as_str().unwrap().to_string();
    let mut customer = from(SHOP, &key);
    customer.push(("authorization", format!("Bearer {token}")));
    let messages = server.url(&format!("/api/conversations/{id}/messages"));
    let (status, _, _) = call(
        "POST",
        &messages,
        &customer,
        &Body::Json(json!({"content": "<script>alert(1)</script>'; DROP TABLE messages; --"})),
    );
    assert_eq!(status, 200);
    let (_, before, _) = call("GET", &messages, &customer, &Body::Empty);
    assert_eq!(
        before["messages"][0]["content"], "<script>alert(1)</script>'; DROP TABLE messages; --",
        "stored and returned as text"
    );

    let with_token = |mut who: Identity| {
        who.push(("authorization", format!("Bearer {token}")));
        who
    };
    let ask = Body::Json(json!({"content": "hello"}));
    let refusals: Vec<(&str, &str, Identity, u16, &str)> = vec![
        (
            "POST",
            url.as_str(),
            from(SHOP, "kefu_site_0000"),
            401,
            "invalid_site_key",
        ),
        (
            "POST",
            url.as_str(),
            from(SHOP, "not a key"),
            401,
            "invalid_site_key",
        ),
        (
            "POST",
            url.as_str(),
            from("http://evil.test", &key),
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            url.as_str(),
            vec![("origin", "http://evil.test".into())],
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            url.as_str(),
            from("https://blog.test", &key),
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            &messages,
            with_token(from("http://evil.test", &key)),
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            &messages,
            with_token(vec![("origin", "http://evil.test".into())]),
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            &messages,
            with_token(from(SHOP, "kefu_site_0000")),
            401,
            "invalid_site_key",
        ),
        (
            "POST",
            &messages,
            with_token(from("https://blog.test", &other_key)),
            404,
            "conversation_not_found",
        ),
        (
            "GET",
            &messages,
            with_token(from("http://evil.test", &key)),
            403,
            "origin_not_allowed",
        ),
    ];
    for (method, target, who, status, code) in &refusals {
        let (got, body, _) = call(method, target, who, &ask);
        assert_eq!(
            (got, body["code"].as_str()),
            (*status, Some(*code)),
            "{method} {target} {who:?}: {body}"
        );
        assert!(body["message"].is_string());
    }
    // The same conversation from its site's second origin still works, and nothing changed.
    let (status, after, _) = call(
        "GET",
        &messages,
        &with_token(from("http://localhost:3000", &key)),
        &Body::Empty,
    );
    assert_eq!(status, 200);
    assert_eq!(after, before, "refused requests stored nothing");
    // Conversations opened without a site still work where there is no foreign origin.
    let (status, _, _) = call("POST", &url, &vec![], &Body::Empty);
    assert_eq!(status, 201);
    // Bad site definitions are refused.
    for (body, code) in [
        (
            json!({"name": "x", "allowed_origins": ["shop.test"]}),
            "invalid_origin",
        ),
        (
            json!({"name": "x", "allowed_origins": ["https://shop.test/path"]}),
            "invalid_origin",
        ),
        (json!({"name": "", "allowed_origins": []}), "invalid_name"),
        (
            json!({"name": "x", "allowed_origins": [], "knowledge_base": "nope"}),
            "knowledge_base_not_found",
        ),
        (
            json!({"name": "shop", "allowed_origins": []}),
            "site_exists",
        ),
        (json!({"name": "x"}), "invalid_json"),
    ] {
        let (status, answer, _) = call(
            "POST",
            &server.url("/api/admin/sites"),
            &staffed.admin_api,
            &Body::Json(body.clone()),
        );
        assert!((400..500).contains(&status), "{body}: {answer}");
        assert_eq!(answer["code"], code, "{body}: {answer}");
    }
    // A removed site's key stops working at once.
    let (_, sites, _) = call(
        "GET",
        &server.url("/api/admin/sites"),
        &staffed.admin_api,
        &Body::Empty,
    );
    assert_eq!(sites["sites"].as_array().unwrap().len(), 2, "{sites}");
    let shop_id = sites["sites"][0]["id"].as_i64().unwrap();
    let (status, _, _) = call(
        "DELETE",
        &server.url(&format!("/api/admin/sites/{shop_id}")),
        &staffed.admin_api,
        &Body::Empty,
    );
    assert_eq!(status, 204);
    let (status, body, _) = call("POST", &url, &from(SHOP, &key), &Body::Empty);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_site_key"))
    );
}

/// Too many requests from one address, or through one widget site, are answered 429 with
/// Retry-After; health checks are not limited.
#[test]
fn rate_limits_answer_429_with_retry_after() {
    let staffed = staffed_server(&["--rate-per-ip", "0", "--rate-per-site", "3"]);
    let (_, key) = add_site(&staffed, "shop", &[SHOP]);
    let url = staffed.server.url("/api/conversations");
    let widget: Identity = vec![("origin", SHOP.into()), ("x-kefu-site", key)];
    for _ in 0..3 {
        assert_eq!(call("POST", &url, &widget, &Body::Empty).0, 201);
    }
    let (status, body, retry) = call("POST", &url, &widget, &Body::Empty);
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    let seconds: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=20).contains(&seconds), "{seconds}");
    // Without a site (no foreign origin) the site's limit does not apply.
    assert_eq!(call("POST", &url, &vec![], &Body::Empty).0, 201);
    drop(staffed);

    let staffed = staffed_server(&["--rate-per-ip", "5"]);
    let server = &staffed.server;
    // Signing in the two staff members took two requests.
    let openapi = server.url("/api/openapi.json");
    for _ in 0..3 {
        assert_eq!(call("GET", &openapi, &vec![], &Body::Empty).0, 200);
    }
    let (status, body, retry) = call("GET", &openapi, &vec![], &Body::Empty);
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert!(retry.is_some());
    assert_eq!(
        call("GET", &server.url("/healthz"), &vec![], &Body::Empty).0,
        200
    );
    assert_eq!(
        call("GET", &server.url("/readyz"), &vec![], &Body::Empty).0,
        200
    );
}
