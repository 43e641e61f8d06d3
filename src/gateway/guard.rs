//! The last line of defence against a bug: a panic anywhere in a request's
//! handling becomes that request's failure, not the connection's.
//!
//! [`Guarded`] polls the request's future inside `catch_unwind`. A panic ends
//! the future with [`Panicked`] (the message and where it happened); the
//! caller answers 500 `api_error` when nothing was written yet, and the
//! request then takes the normal way out through Pingora's logging phase, so
//! its admission is released, the in-flight gauges come back down and the
//! ledger gets its record. The process-wide panic hook ([`install_hook`])
//! stays quiet for panics caught here, so each is logged exactly once, by the
//! caller, with the request id; panics anywhere else are printed as before.
//!
//! Nothing here decides how to answer: that is `gateway::respond`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    /// A guarded future is being polled on this thread.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// What the hook saw of the last guarded panic on this thread.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A request's panic, as the hook described it.
#[derive(Debug)]
pub struct Panicked(pub String);

/// Route panics inside [`Guarded`] futures to their request instead of
/// stderr. Installed once by `serve`; other panics go to the previous hook.
pub fn install_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if GUARDED.with(Cell::get) {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let described = format!("{}{at}", payload_text(info.payload()));
            CAUGHT.with(|c| *c.borrow_mut() = Some(described));
        } else {
            previous(info);
        }
    }));
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

pin_project_lite::pin_project! {
    /// A future whose panics are caught and reported as [`Panicked`].
    pub struct Guarded<F> {
        #[pin]
        inner: F,
    }
}

/// Guard `inner`: see the module docs.
pub fn guarded<F: Future>(inner: F) -> Guarded<F> {
    Guarded { inner }
}

impl<F: Future> Future for Guarded<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        let outer = GUARDED.with(|g| g.replace(true));
        let polled = catch_unwind(AssertUnwindSafe(|| inner.poll(cx)));
        GUARDED.with(|g| g.set(outer));
        match polled {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                let described = CAUGHT
                    .with(|c| c.borrow_mut().take())
                    .unwrap_or_else(|| payload_text(payload.as_ref()));
                Poll::Ready(Err(Panicked(described)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_message_and_place() {
        install_hook();
        let ok = guarded(async { 5 }).await;
        assert_eq!(ok.unwrap(), 5);
        let value = serde_json::json!([0]);
        let caught = guarded(async move {
            tokio::task::yield_now().await;
            let mut v = value;
            // IndexMut on a number: the panic the guard exists for.
            v[0]["content"] = serde_json::Value::Null;
            v
        })
        .await
        .unwrap_err();
        assert!(caught.0.contains("cannot access key"), "{}", caught.0);
        assert!(caught.0.contains("value/index.rs"), "where it panicked: {}", caught.0);
        assert!(!GUARDED.with(Cell::get), "the flag is cleared after a panic");
    }
}
