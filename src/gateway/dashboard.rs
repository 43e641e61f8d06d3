//! The activity dashboard's pages: `GET /dashboard` (the organisation's
//! activity, an admin page), `GET /dashboard/me` (a developer's own usage,
//! on the main listener) and their assets under `/dashboard/assets/`.
//!
//! This module owns only the serving: the pages are static files from
//! `web/dashboard/`, embedded in the binary at build time (uPlot vendored
//! there, pinned through npm; nothing is fetched from elsewhere at run
//! time). They hold no data and no secret: the browser fetches the
//! figures from the documented JSON endpoints (`/admin/usage`,
//! `/admin/budgets`, `/admin/reliability`, the `/admin/live` feed, and
//! `/v1/usage` for the developer's page) with the caller's own
//! credential. Every page answer carries a strict Content-Security-Policy
//! (scripts and styles from this origin only, no framing).
//!
//! `/dashboard` answers where the admin endpoints do: on `admin_listen`
//! without a key, on the main listener behind an admin key. A browser
//! cannot attach a header to a navigation, so there the admin key may
//! also come as the password of HTTP Basic authentication; a refused
//! page answers 401 with a `WWW-Authenticate: Basic` challenge, the
//! browser asks for the key once and sends it with the page's own
//! requests after that. `/dashboard/me` is public: it asks the developer
//! for their key in the page and sends it to `/v1/usage` only.

use bytes::Bytes;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::{auth, respond, Role};
use crate::error::GatewayError;
use crate::runtime::Snapshot;

/// One dashboard path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/dashboard`: the organisation's activity (admin).
    Activity,
    /// `/dashboard/me`: a developer's own usage.
    Me,
    /// `/dashboard/assets/{name}`: an index into [`ASSETS`].
    Asset(usize),
}

struct File {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// A file of `web/dashboard/`, embedded, served under `$name`.
macro_rules! web {
    ($name:literal, $file:literal, $type:expr) => {
        File {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/dashboard/", $file)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

const ACTIVITY: File = web!("index.html", "index.html", HTML);
const ME: File = web!("me.html", "me.html", HTML);

/// The assets, by the name after `/dashboard/assets/`.
const ASSETS: &[File] = &[
    web!("app.js", "app.js", JS),
    web!("me.js", "me.js", JS),
    web!("common.js", "common.js", JS),
    web!("style.css", "style.css", CSS),
    web!("uPlot.iife.min.js", "vendor/uPlot.iife.min.js", JS),
    web!("uPlot.min.css", "vendor/uPlot.min.css", CSS),
];

/// Scripts, styles and requests from this origin only; no inline script,
/// no framing, no form posting elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard page a path names, if any (`/dashboard/me` only on the
/// main listener, where `/v1/usage` is).
pub fn route(role: Role, path: &str) -> Option<Page> {
    match path {
        "/dashboard" => Some(Page::Activity),
        "/dashboard/me" => (role == Role::Main).then_some(Page::Me),
        p => {
            let name = p.strip_prefix("/dashboard/assets/")?;
            ASSETS.iter().position(|f| f.name == name).map(Page::Asset)
        }
    }
}

/// Answer a dashboard request.
pub async fn serve(
    role: Role,
    page: Page,
    session: &mut Session,
    ctx: &mut RequestCtx,
    snap: &Snapshot,
) -> Result<(), GatewayError> {
    let file = match page {
        Page::Activity => {
            if role == Role::Main {
                if let Err(e) = auth::authorize_admin(snap, &session.req_header().headers) {
                    return challenge(session, ctx, snap, e).await;
                }
            }
            &ACTIVITY
        }
        Page::Me => &ME,
        Page::Asset(i) => &ASSETS[i],
    };
    let headers = [
        ("content-security-policy", CSP.to_string()),
        ("x-content-type-options", "nosniff".to_string()),
        ("x-frame-options", "DENY".to_string()),
        ("referrer-policy", "no-referrer".to_string()),
        // Small files: revalidated each time, so an upgrade's pages and
        // scripts never mix with the last version's.
        ("cache-control", "no-cache".to_string()),
    ];
    respond::complete(
        session,
        ctx,
        200,
        file.content_type,
        Bytes::from_static(file.body),
        &headers,
    )
    .await;
    Ok(())
}

/// A refused admin page: 401 with a Basic challenge so the browser asks
/// for the admin key (with admin keys configured, a wrong one asks again);
/// any other refusal (404 here, or no admin key to ask for) stays as it is.
async fn challenge(
    session: &mut Session,
    ctx: &mut RequestCtx,
    snap: &Snapshot,
    e: GatewayError,
) -> Result<(), GatewayError> {
    let e = match e {
        GatewayError::Permission(m) if snap.has_admin_keys() => GatewayError::Authentication(m),
        e => e,
    };
    if !matches!(e, GatewayError::Authentication(_)) {
        return Err(e);
    }
    respond::error_with(
        session,
        ctx,
        &e,
        &[(
            "www-authenticate",
            "Basic realm=\"modelgate admin\", charset=\"UTF-8\"".to_string(),
        )],
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(Role::Main, "/dashboard"), Some(Page::Activity));
        assert_eq!(route(Role::Admin, "/dashboard"), Some(Page::Activity));
        assert_eq!(route(Role::Main, "/dashboard/me"), Some(Page::Me));
        assert_eq!(route(Role::Admin, "/dashboard/me"), None);
        assert!(matches!(
            route(Role::Admin, "/dashboard/assets/app.js"),
            Some(Page::Asset(_))
        ));
        assert_eq!(route(Role::Main, "/dashboard/assets/../main.rs"), None);
        assert_eq!(route(Role::Main, "/dashboard/assets/"), None);
        assert_eq!(route(Role::Main, "/dashboardx"), None);
    }

    #[test]
    fn pages_name_only_embedded_assets() {
        // Every script and stylesheet a page names is one this module serves.
        for page in [ACTIVITY.body, ME.body] {
            let html = std::str::from_utf8(page).unwrap();
            for (i, _) in html.match_indices("/dashboard/assets/") {
                let rest = &html[i + "/dashboard/assets/".len()..];
                let name = &rest[..rest.find('"').unwrap()];
                assert!(ASSETS.iter().any(|f| f.name == name), "{name}");
            }
            // No inline script or style: the CSP would refuse it.
            assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains(" style="));
            assert!(!html.contains("http://") && !html.contains("https://"));
        }
    }
}
