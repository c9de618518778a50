//! `/console`: the operator's HTML console, one self-contained page (HTML, CSS and
//! JavaScript, no external assets) built into the binary. Loading it needs no credential;
//! every data call it makes sends the secret the person types, to the JSON API.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use rand::RngCore;

use super::openapi::{Op, Returns, Routes};

const PAGE: &str = include_str!("console.html");
/// Where the page's `<script>` and `<style>` tags carry the per-response nonce.
const NONCE_SLOT: &str = "__CSP_NONCE__";

pub fn routes() -> Routes {
    Routes::default().route(
        "/console",
        get(console),
        vec![
            Op::get(
                "The operator console (HTML); its data calls use your credential",
                Returns::Text("text/html"),
            )
            .public(),
        ],
    )
}

async fn console() -> Response {
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    let nonce = base64::engine::general_purpose::STANDARD.encode(bytes);
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let mut response = PAGE.replace(NONCE_SLOT, &nonce).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_and_style_tag_takes_the_nonce() {
        let opening = |tag: &str| PAGE.matches(&format!("<{tag}")).count();
        let nonced = |tag: &str| {
            PAGE.matches(&format!("<{tag} nonce=\"{NONCE_SLOT}\">"))
                .count()
        };
        assert_eq!(opening("script"), 1);
        assert_eq!(nonced("script"), 1);
        assert_eq!(opening("style"), 1);
        assert_eq!(nonced("style"), 1);
    }
}
