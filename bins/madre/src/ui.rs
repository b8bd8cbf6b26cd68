//! The approval page (SPEC §17): plain HTML, CSS and JavaScript embedded in
//! the binary, no build step and nothing from elsewhere. Served with a
//! strict Content-Security-Policy (its own script and style only, no inline
//! code), `X-Frame-Options: DENY`, and never cached. The page itself needs
//! no token; everything it shows comes from the API with the approver's.

use actix_web::HttpResponse;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");
const ICON: &str = include_str!("../ui/favicon.svg");

/// Only this origin's script, style and requests; nothing inline, no frames,
/// no plugins, forms only to here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

fn page(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-store"))
        .body(body)
}

/// `GET /ui` and `GET /ui/plans/{id}` (an approve link): the page.
pub async fn index() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/app.js`.
pub async fn script() -> HttpResponse {
    page("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /ui/app.css`.
pub async fn style() -> HttpResponse {
    page("text/css; charset=utf-8", STYLE)
}

/// `GET /ui/favicon.svg`.
pub async fn icon() -> HttpResponse {
    page("image/svg+xml", ICON)
}
