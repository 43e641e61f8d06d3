//! The browser side of sign-in: the verification page where a person
//! confirms the code Claude Code shows (never approved by opening a link),
//! the round trip to the identity provider, and its callback. Pages are
//! small, escaped HTML with a strict content security policy; every form
//! post is bound to the browser that started it (a `__Host-` cookie on
//! https, a CSRF token derived from it) and refused from another site.

use std::collections::HashMap;

use bytes::Bytes;
use pingora::proxy::Session;

use super::{read_form, FLOW_TTL_MS, IDP_REFRESH};
use crate::error::GatewayError;
use crate::gateway::ctx::RequestCtx;
use crate::gateway::{respond, Shared};
use crate::policy::period::now_ms;
use crate::runtime::Snapshot;
use crate::signin::codes;
use crate::signin::idp::IdpError;
use crate::signin::policy::Signin;
use crate::store::signin::{Decision, Flow, Identity};

/// The browser-binding cookie: `__Host-` on https (no other host of the
/// domain can set or shadow it), a plain name on loopback http.
const COOKIE: &str = "mg_signin";
const HOST_COOKIE: &str = "__Host-mg_signin";

fn cookie_name(signin: &Signin) -> &'static str {
    if signin.secure_cookies {
        HOST_COOKIE
    } else {
        COOKIE
    }
}
/// A page to show.
pub(super) struct Page {
    status: u16,
    title: &'static str,
    /// HTML, escaped where it holds anything not ours.
    body: String,
    /// A redirect instead (`303 See Other`).
    location: Option<String>,
}

impl Page {
    pub(super) fn new(status: u16, title: &'static str, text: &str) -> Page {
        Page {
            status,
            title,
            body: format!("<p>{}</p>", esc(text)),
            location: None,
        }
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) async fn send_page(
    session: &mut Session,
    ctx: &mut RequestCtx,
    page: Page,
    extra: &[(&'static str, String)],
) -> Result<(), GatewayError> {
    let mut headers = vec![
        ("cache-control", "no-store".to_string()),
        ("x-frame-options", "DENY".to_string()),
        ("referrer-policy", "no-referrer".to_string()),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'".to_string(),
        ),
    ];
    headers.extend(extra.iter().cloned());
    if let Some(to) = page.location {
        headers.push(("location", to));
        respond::complete(session, ctx, 303, "text/plain; charset=utf-8", Bytes::new(), &headers).await;
        return Ok(());
    }
    let html = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>{title} · modelgate</title><style>body{{font:16px system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em;color:#222}}\
         input{{font:inherit;font-size:1.4em;letter-spacing:.1em;width:10em;text-transform:uppercase}}\
         button{{font:inherit;padding:.4em 1.2em;margin-right:.6em}}code{{font-size:1.3em}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>",
        title = page.title,
        body = page.body
    );
    respond::complete(
        session,
        ctx,
        page.status,
        "text/html; charset=utf-8",
        Bytes::from(html),
        &headers,
    )
    .await;
    Ok(())
}

pub(super) fn set_cookie(signin: &Signin, value: &str) -> String {
    format!(
        "{}={value}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax{}",
        cookie_name(signin),
        if signin.secure_cookies { "; Secure" } else { "" }
    )
}

/// The browser-binding cookie the request carries.
fn cookie(session: &Session, signin: &Signin) -> Option<String> {
    let wanted = cookie_name(signin);
    session
        .req_header()
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, value)| *name == wanted && value.len() >= 32 && value.len() <= 64)
        .map(|(_, value)| value.to_string())
}

/// Whether a form post comes from the gateway's own pages: a browser says
/// where a post comes from (`Origin`, `Sec-Fetch-Site`); one from another
/// site, even a sibling host of the same domain, is refused.
fn same_origin(session: &Session, signin: &Signin) -> bool {
    let h = &session.req_header().headers;
    let origin_ok = h
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|o| o.trim_end_matches('/') == signin.origin);
    let site_ok = h
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|s| matches!(s, "same-origin" | "none"));
    origin_ok && site_ok
}

fn query(session: &Session) -> HashMap<String, String> {
    url::form_urlencoded::parse(session.req_header().uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The form asking for the user code, pre-filled from the link Claude
/// Code opened; the person still submits it (RFC 8628 §5.4).
fn code_form(signin: &Signin, cookie: &str, code: &str, note: &str) -> String {
    format!(
        "{note}<p>Enter the code Claude Code shows to sign it in with your organisation's account.</p>\
         <form method=\"post\" action=\"{url}/device\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"step\" value=\"code\">\
         <p><input name=\"user_code\" value=\"{code}\" autocomplete=\"off\" autofocus required maxlength=\"16\" placeholder=\"XXXX-XXXX\"></p>\
         <p><button type=\"submit\">Continue</button></p></form>",
        url = esc(&signin.public_url),
        csrf = signin.csrf_token(cookie),
        code = esc(code),
    )
}

pub(super) fn device_page(session: &Session, signin: &Signin) -> (Page, Option<String>) {
    let (cookie, fresh) = match cookie(session, signin) {
        Some(c) => (c, None),
        None => {
            let c = codes::secret();
            (c.clone(), Some(c))
        }
    };
    let q = query(session);
    let code = q
        .get("user_code")
        .and_then(|c| codes::normalize_user_code(c))
        .unwrap_or_default();
    let page = Page {
        status: 200,
        title: "Sign in Claude Code",
        body: code_form(signin, &cookie, &code, ""),
        location: None,
    };
    (page, fresh)
}

pub(super) async fn device_form(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    snap: &Snapshot,
    signin: &Signin,
) -> (Page, Option<String>) {
    if !same_origin(session, signin) {
        ctx.error_message = Some("verification form: posted from another site".into());
        return (
            Page::new(
                403,
                "Start again",
                "This form was sent from another site. Open the link Claude Code shows and continue on this gateway's own page.",
            ),
            None,
        );
    }
    let Some(cookie) = cookie(session, signin) else {
        return (
            Page::new(
                400,
                "Start again",
                "This browser did not keep the sign-in cookie. Open the link Claude Code shows again.",
            ),
            None,
        );
    };
    let form = match read_form(session, snap).await {
        Ok(f) => f,
        Err(e) => return (Page::new(400, "Bad request", &e.description), None),
    };
    if !form.get("csrf").is_some_and(|t| signin.csrf_ok(&cookie, t)) {
        ctx.error_message = Some("verification form: CSRF token mismatch".into());
        return (
            Page::new(
                403,
                "Start again",
                "This form did not come from this gateway's sign-in page (or the page is stale). Open the link Claude Code shows again.",
            ),
            None,
        );
    }
    let Some(code) = form.get("user_code").and_then(|c| codes::normalize_user_code(c)) else {
        return ask_again(
            signin,
            &cookie,
            "That is not a code Claude Code shows: it is eight letters, like WDJB-MJHT.",
        );
    };
    let store = match shared.signin.store(shared, snap).await {
        Ok(s) => s,
        Err(e) => return (service_down(e), None),
    };
    let now = now_ms();
    let pending = match store.pending(code.clone(), now).await {
        Ok(p) => p,
        Err(e) => return (service_down(e), None),
    };
    let Some(grant) = pending else {
        return ask_again(
            signin,
            &cookie,
            "That code is unknown, expired or already used. Check it, or start the sign-in in Claude Code again.",
        );
    };
    match form.get("step").map(String::as_str) {
        Some("approve") => {
            let idp = match shared.signin.idp(signin).await {
                Ok(i) => i,
                Err(e) => return (service_down(e), None),
            };
            let auth = idp.authorize();
            let flow = Flow {
                state_hash: codes::digest(&auth.state),
                user_code: grant.user_code,
                browser_hash: codes::digest(&cookie),
                nonce: auth.nonce,
                pkce_verifier: auth.pkce_verifier,
                expires_ms: now + FLOW_TTL_MS,
            };
            if let Err(e) = store.put_flow(flow).await {
                return (service_down(e), None);
            }
            let page = Page {
                status: 303,
                title: "Signing in",
                body: String::new(),
                location: Some(auth.url),
            };
            (page, None)
        }
        Some("deny") => {
            let _ = store.decide(grant.user_code, Decision::Deny, now).await;
            (
                Page::new(
                    200,
                    "Sign-in denied",
                    "Claude Code was not signed in. You can close this window.",
                ),
                None,
            )
        }
        _ => {
            let what = match grant.surface.as_deref() {
                Some("claude_code") | None => "Claude Code".to_string(),
                Some(other) => other.to_string(),
            };
            let csrf = signin.csrf_token(&cookie);
            let body = format!(
                "<p>{what} is asking to sign in with code</p><p><code>{code}</code></p>\
                 <p>Continue only if this is the code your own terminal or editor shows.</p>\
                 <form method=\"post\" action=\"{url}/device\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"user_code\" value=\"{code}\">\
                 <button type=\"submit\" name=\"step\" value=\"approve\">Sign in</button>\
                 <button type=\"submit\" name=\"step\" value=\"deny\">Deny</button></form>",
                what = esc(&what),
                code = esc(&code),
                url = esc(&signin.public_url),
            );
            (
                Page {
                    status: 200,
                    title: "Confirm the code",
                    body,
                    location: None,
                },
                None,
            )
        }
    }
}

/// The code form again, with why the last code was not taken.
fn ask_again(signin: &Signin, cookie: &str, why: &str) -> (Page, Option<String>) {
    let note = format!("<p><strong>{}</strong></p>", esc(why));
    let page = Page {
        status: 400,
        title: "Sign in Claude Code",
        body: code_form(signin, cookie, "", &note),
        location: None,
    };
    (page, None)
}

fn service_down(e: impl std::fmt::Display) -> Page {
    log::warn!("sign-in page: {e}");
    Page::new(
        503,
        "Try again shortly",
        "The gateway cannot reach its sign-in store or the identity provider right now. Try again in a minute.",
    )
}

/// The identity provider's redirect back: finish its code flow, check the
/// user against `allowed_groups`, and approve (or deny) the grant.
pub(super) async fn callback(
    shared: &Shared,
    session: &mut Session,
    snap: &Snapshot,
    signin: &Signin,
) -> (Page, Option<String>) {
    let q = query(session);
    let Some(state) = q.get("state").filter(|s| !s.is_empty()) else {
        return (
            Page::new(400, "Sign-in failed", "The identity provider's answer has no `state`."),
            None,
        );
    };
    let store = match shared.signin.store(shared, snap).await {
        Ok(s) => s,
        Err(e) => return (service_down(e), None),
    };
    let now = now_ms();
    let flow = match store.take_flow(codes::digest(state), now).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return (
                Page::new(
                    400,
                    "Sign-in failed",
                    "This sign-in link has expired or was already used. Start the sign-in in Claude Code again.",
                ),
                None,
            )
        }
        Err(e) => return (service_down(e), None),
    };
    if cookie(session, signin).is_none_or(|c| codes::digest(&c) != flow.browser_hash) {
        // Not this browser's: the flow stays for the one that started it.
        let _ = store.put_flow(flow).await;
        return (
            Page::new(
                400,
                "Sign-in failed",
                "This sign-in was started in another browser. Open the link Claude Code shows in this one.",
            ),
            None,
        );
    }
    if let Some(error) = q.get("error") {
        let _ = store.decide(flow.user_code, Decision::Deny, now).await;
        let why = q.get("error_description").unwrap_or(error);
        return (
            Page::new(
                400,
                "Sign-in failed",
                &format!("The identity provider did not sign you in: {why}"),
            ),
            None,
        );
    }
    let Some(code) = q.get("code").filter(|c| !c.is_empty()) else {
        return (
            Page::new(400, "Sign-in failed", "The identity provider's answer has no `code`."),
            None,
        );
    };
    let idp = match shared.signin.idp(signin).await {
        Ok(i) => i,
        Err(e) => return (service_down(e), None),
    };
    let user = match idp.finish(code, &flow.nonce, &flow.pkce_verifier).await {
        Ok(u) => u,
        Err(e @ IdpError::Unreachable { .. }) => return (service_down(e), None),
        Err(e) => {
            log::warn!("sign-in callback: {e}");
            let _ = store.decide(flow.user_code, Decision::Deny, now).await;
            return (
                Page::new(
                    400,
                    "Sign-in failed",
                    "The identity provider's answer did not verify, so the sign-in was refused. Start it again in Claude Code.",
                ),
                None,
            );
        }
    };
    let who = user.email.clone().unwrap_or_else(|| user.subject.clone());
    if !signin.allows(&user.groups) {
        let _ = store.decide(flow.user_code, Decision::Deny, now).await;
        log::info!("sign-in: refused {who}: not in signin.allowed_groups");
        let text = format!("{who} is not in a group allowed to use this gateway. Ask your administrator for access.");
        return (Page::new(403, "Not allowed", &text), None);
    }
    let identity = Identity {
        subject: user.subject,
        email: user.email,
        name: user.name,
        groups: user.groups,
        idp_refresh: user.refresh_token.and_then(|t| signin.sealer.seal(IDP_REFRESH, &t)),
        current_refresh: None,
    };
    match store.decide(flow.user_code, Decision::Approve(identity), now).await {
        Ok(true) => (
            Page::new(
                200,
                "Signed in",
                &format!("Claude Code is signed in as {who}. You can close this window and return to it."),
            ),
            None,
        ),
        Ok(false) => (
            Page::new(
                400,
                "Sign-in failed",
                "The code expired before the sign-in finished. Start it again in Claude Code.",
            ),
            None,
        ),
        Err(e) => (service_down(e), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(esc("<a href='x'>&\""), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;");
    }
}
