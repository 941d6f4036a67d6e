//! The dashboard: `GET /` and its assets under `/ui/`, compiled into the binary (no CDN, no
//! external fonts: it works on a machine with no network). It needs no token to load; the page
//! asks for one when the API answers 401 and sends it with every call (see `dashboard/app.js`).
//!
//! Each asset carries an `ETag` (a prefix of its SHA-256), so a browser revalidates with a 304
//! instead of downloading it again, and a strict `Content-Security-Policy`: only this origin's
//! scripts, styles and connections, no framing (a page elsewhere cannot overlay it to steal
//! clicks), no inline script.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

/// One embedded file.
struct Asset {
    /// The path it is served at.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 5] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("dashboard/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("dashboard/app.js"),
    },
    Asset {
        path: "/ui/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("dashboard/style.css"),
    },
    Asset {
        path: "/ui/d3-force.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("dashboard/vendor/d3-force.min.js"),
    },
    Asset {
        path: "/ui/LICENSE-d3.txt",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("dashboard/vendor/LICENSE-d3"),
    },
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Whether `path` is one of the dashboard's own files (served without the API token).
pub fn is_asset(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..20]))
            .collect()
    })
}

/// Serves the asset at the request's path (routes are registered for each one).
async fn asset(req: HttpRequest) -> HttpResponse {
    let Some(i) = ASSETS.iter().position(|a| a.path == req.path()) else {
        return HttpResponse::NotFound().finish();
    };
    let etag = &etags()[i];
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if fresh {
        return response.finish();
    }
    response
        .content_type(ASSETS[i].content_type)
        .body(ASSETS[i].body)
}

/// Registers a GET route for every asset.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for a in &ASSETS {
        cfg.route(a.path, web::get().to(asset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_assets_that_are_served() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        for attr in ["src=\"", "href=\""] {
            for part in page.split(attr).skip(1) {
                let url = part.split('"').next().unwrap();
                if url.starts_with("/ui/") {
                    assert!(
                        is_asset(url),
                        "index.html loads {url}, which is not embedded"
                    );
                }
                assert!(
                    !url.starts_with("http") && !url.starts_with("//"),
                    "index.html loads {url} from elsewhere"
                );
            }
        }
        assert!(is_asset("/") && !is_asset("/status") && !is_asset("/ui/"));
    }
}
