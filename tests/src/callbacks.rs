//! [`TestCallbacks`]: a scripted, recording [`Callbacks`] for tests.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use keyward_kms::{Callbacks, Error, Notice, Result, SecretKind, SecretRequest, SecretString};

/// One prompt as the backend sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// What was asked for.
    pub kind: SecretKind,
    /// Tries left, as the backend reported them.
    pub retries_left: Option<u32>,
}

/// Something to do while the next prompt is open.
type Hook = Box<dyn FnOnce() + Send>;

/// A one-shot [`Hook`] slot.
#[derive(Default)]
struct NextPrompt(Mutex<Option<Hook>>);

impl fmt::Debug for NextPrompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let armed = lock(&self.0).is_some();
        f.debug_struct("NextPrompt").field("armed", &armed).finish()
    }
}

/// Answers prompts from a script and records everything it is asked and
/// told. Unscripted prompts are answered with [`Error::Cancelled`].
#[derive(Debug, Default)]
pub struct TestCallbacks {
    answers: Vec<(SecretKind, SecretString)>,
    answer_with_shown: bool,
    prompts: Mutex<Vec<Prompt>>,
    notices: Mutex<Vec<String>>,
    shown: Mutex<Vec<(String, SecretString)>>,
    next_prompt: NextPrompt,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TestCallbacks {
    /// Callbacks that answer nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers prompts of `kind` with `secret`.
    #[must_use]
    pub fn answer(mut self, kind: SecretKind, secret: &str) -> Self {
        self.answers.push((kind, SecretString::from(secret)));
        self
    }

    /// Answers recovery-key prompts with the last secret shown through
    /// [`Callbacks::show_secret`] (what a user who wrote it down types).
    #[must_use]
    pub fn answer_with_shown_secret(mut self) -> Self {
        self.answer_with_shown = true;
        self
    }

    /// Runs `hook` once, inside the next prompt, before it is answered:
    /// what happens to a device while the user types (a fixture unplugs it).
    pub fn on_next_prompt(&self, hook: impl FnOnce() + Send + 'static) {
        *lock(&self.next_prompt.0) = Some(Box::new(hook));
    }

    /// The prompts received so far.
    pub fn prompts(&self) -> Vec<Prompt> {
        lock(&self.prompts).clone()
    }

    /// How many prompts were received so far.
    pub fn prompt_count(&self) -> usize {
        lock(&self.prompts).len()
    }

    /// The notices received so far, as debug text.
    pub fn notices(&self) -> Vec<String> {
        lock(&self.notices).clone()
    }

    /// The last secret shown, if any.
    pub fn last_shown(&self) -> Option<SecretString> {
        lock(&self.shown).last().map(|(_, s)| s.clone())
    }

    /// The titles of the secrets shown so far.
    pub fn shown_titles(&self) -> Vec<String> {
        lock(&self.shown).iter().map(|(t, _)| t.clone()).collect()
    }
}

impl Callbacks for TestCallbacks {
    fn request_secret(&self, request: &SecretRequest<'_>) -> Result<SecretString> {
        lock(&self.prompts).push(Prompt {
            kind: request.kind,
            retries_left: request.retries_left,
        });
        let hook = lock(&self.next_prompt.0).take();
        if let Some(hook) = hook {
            hook();
        }
        if self.answer_with_shown && request.kind == SecretKind::RecoveryKey {
            return self.last_shown().ok_or(Error::Cancelled);
        }
        self.answers
            .iter()
            .find(|(kind, _)| *kind == request.kind)
            .map(|(_, secret)| secret.clone())
            .ok_or(Error::Cancelled)
    }

    fn notify(&self, notice: &Notice<'_>) {
        lock(&self.notices).push(format!("{notice:?}"));
    }

    fn show_secret(&self, title: &str, secret: &SecretString) -> Result<()> {
        lock(&self.shown).push((title.to_owned(), secret.clone()));
        Ok(())
    }
}
