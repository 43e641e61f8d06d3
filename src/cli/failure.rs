//! How an editing command stops: an exit code (1: the person's request was
//! refused, 2: the config or the system is the problem) and a message that
//! says what to do next. Shared by `keys`, `provider` and `route`.

use std::path::Path;

use crate::config::edit::EditError;

pub const USER_ERROR: i32 = 1;
pub const CONFIG_ERROR: i32 = 2;

/// Why a command stopped: the exit code and what to tell the person.
pub(crate) struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn user(message: impl Into<String>) -> Failure {
        Failure {
            code: USER_ERROR,
            message: message.into(),
        }
    }

    pub fn config(message: impl Into<String>) -> Failure {
        Failure {
            code: CONFIG_ERROR,
            message: message.into(),
        }
    }

    /// An edit error, told against the file it concerns.
    pub fn edit(path: &Path, e: EditError) -> Failure {
        let file = path.display();
        match e {
            EditError::Refused(m) => Failure::user(m),
            EditError::Invalid(m) => Failure::user(format!(
                "{file}: refused, the file would not load after this change: {m}"
            )),
            EditError::AlreadyInvalid(m) => Failure::config(format!(
                "{file} does not load as it is, so nothing was changed: {m}\n\
                 Fix it (check with `modelgate config validate`), or set the missing environment variables, and run this again."
            )),
            EditError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Failure::config(format!(
                "{file}: no such file; create one with `modelgate config init`, or point -c at yours"
            )),
            e => Failure::config(format!("{file}: {e}")),
        }
    }
}

/// Print a failure and turn it into the exit code.
pub(crate) fn finish(result: Result<(), Failure>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("modelgate: {}", f.message);
            f.code
        }
    }
}
