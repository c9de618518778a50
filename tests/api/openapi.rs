//! The OpenAPI document covers every route the server answers, with request and response
//! schemas, and every reference in it resolves.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::*;

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

async fn the_document_describes_every_route_and_method_the_server_answers(app: TestApp) {
    let (status, doc) = send(app.client.get(format!("{}/openapi.json", app.base))).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");
    let described = hookline::api::routes().described();
    assert!(described.len() >= 40, "{} paths", described.len());
    for (path, methods) in &described {
        for method in methods {
            let op = &doc["paths"][path][method];
            assert!(
                op.is_object(),
                "{method} {path} is missing from the document"
            );
            let success = op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .any(|k| k.starts_with('2'));
            assert!(success, "{method} {path} has no success response");
        }
        // What the server answers on the path is exactly what is described: any other
        // method is 405, and each described one is served (not 405).
        let concrete = path
            .replace("{id}", "WD00000000000000000000000000")
            .replace("{callback}", "CB00000000000000000000000000")
            .replace("{merchant}", "CU00000000000000000000000000");
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            let response = app
                .operator(method.clone(), &concrete)
                .json(&serde_json::json!({}))
                .send()
                .await
                .expect("an answer");
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let is_described = methods.contains(&method.as_str().to_lowercase().as_str());
            if is_described {
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is described but not served: {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not described: {body}"
                );
            }
        }
    }
    // Creates and updates describe their request bodies.
    for (path, method) in [
        ("/debits", "post"),
        ("/orders/{id}", "put"),
        ("/callbacks", "post"),
        ("/processor/transactions/{id}", "put"),
    ] {
        assert!(
            doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
                .is_object(),
            "{method} {path}"
        );
    }
    // Query parameters and headers are described too.
    let names = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    for name in [
        "limit",
        "after",
        "before",
        "type",
        "entity",
        "occurred_from",
        "occurred_until",
        "delivery_status",
    ] {
        assert!(
            names("/events", "get").iter().any(|n| n == name),
            "/events lacks {name}"
        );
    }
    assert!(
        names("/debits", "post")
            .iter()
            .any(|n| n == "Idempotency-Key")
    );
    assert!(names("/debits/{id}", "put").iter().any(|n| n == "If-Match"));
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r} is not a component"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }
}

on_both_backends!(the_document_describes_every_route_and_method_the_server_answers);
