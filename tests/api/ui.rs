//! The approval page's files and headers (SPEC §17); the page itself is
//! tested in a real browser by bins/madre/tests/browser.rs.

use crate::helpers::*;

/// The status, headers and body of `GET path` (no token).
async fn get(app: &TestApp, path: &str) -> (u16, awc::http::header::HeaderMap, String) {
    let mut response = awc::Client::new()
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    let body = response.body().await.unwrap();
    (
        response.status().as_u16(),
        response.headers().clone(),
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[actix_rt::test]
async fn the_page_is_served_with_a_strict_policy_and_no_inline_code() {
    let app = spawn_app().await;
    for (path, kind) in [
        ("/ui", "text/html"),
        (
            "/ui/plans/7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "text/html",
        ),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let (status, headers, body) = get(&app, path).await;
        assert_eq!(status, 200, "{path}");
        let header = |name: &str| {
            headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(header("x-frame-options"), "DENY");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("cache-control"), "no-store");
        if kind == "text/html" {
            // Scripts only by `src` from this origin, no handlers inline.
            assert_eq!(body.matches("<script").count(), 1);
            assert!(body.contains(r#"<script src="/ui/app.js"></script>"#));
            assert!(!body.contains(" onclick") && !body.contains("style="));
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "no third-party resource"
            );
        }
    }
}

#[actix_rt::test]
async fn whoami_names_the_callers_role() {
    let app = spawn_app().await;
    for (token, name, role) in [
        (ADMIN, "admin", "admin"),
        (OPERATOR, "olga", "operator"),
        (VIEWER, "vera", "viewer"),
    ] {
        let me = app.send("GET", "/madre/whoami", Some(token), None).await;
        assert_eq!(me.status, 200);
        assert_eq!((s(&me.body["name"]), s(&me.body["role"])), (name, role));
    }
    assert_eq!(
        app.send("GET", "/madre/whoami", None, None).await.status,
        401
    );
}
