//! The web console: three static files embedded in the binary, served by the admin listener
//! at `/` (and `/ui/`), `/ui/app.js` and `/ui/app.css`.
//!
//! The files hold no data and need no token: the page asks the operator for the admin token,
//! keeps it in `sessionStorage` and calls the admin JSON API with `Authorization: Bearer`
//! (no cookies, so no cross-site request can act with the operator's rights). Every answer
//! carries a Content-Security-Policy that allows only this origin's own script and style, no
//! inline script, no framing; the script inserts what it shows as text, never as HTML
//! (docs/console.md).

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// `default-src 'self'` and nothing inline; `img-src data:` for nothing but the page's own
/// icons; no framing (clickjacking), no `<base>`, no form posts anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        // Revalidated on every load: an upgraded daemon serves its own console at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules the CSP enforces in the browser, checked on the files themselves too: no
    /// inline script or handler, no style attribute, nothing fetched from elsewhere, and no
    /// API for inserting markup in the script.
    #[test]
    fn the_console_files_keep_to_the_content_security_policy() {
        let index = INDEX.to_ascii_lowercase();
        for inline in ["<script>", "<script type", " onclick", " onload", " onerror", " style="] {
            assert!(!index.contains(inline), "index.html has {inline:?}");
        }
        for file in [INDEX, SCRIPT, STYLE] {
            // The SVG namespace is a name, not a fetch.
            let file = file.replace("http://www.w3.org/2000/svg", "");
            assert!(!file.contains("http://") && !file.contains("https://"), "an external URL");
        }
        for markup in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!SCRIPT.contains(markup), "app.js uses {markup}");
        }
        assert!(INDEX.contains("/ui/app.js") && INDEX.contains("/ui/app.css"));
    }
}
