//! Runs one command: finds the keystore, opens the [`Service`], unlocks it
//! when the operation needs the master key, and prints the result.

mod audit;
mod data;
mod keys;
mod setup;

use std::path::PathBuf;

use keyward_kms::service::{Backends, UnlockWith};
use keyward_kms::{Error, Service};

use crate::args::{Cli, Command};
use crate::failure::{Exit, Failure, UNLOCK_HINT};
use crate::ui::Ui;

/// What every command needs: the parsed arguments, the keystore path and
/// the user interface.
pub(crate) struct Ctx<'a> {
    /// Parsed arguments.
    pub(crate) cli: &'a Cli,
    /// Keystore path.
    pub(crate) path: PathBuf,
    /// Secret sources, prompts, notices.
    pub(crate) ui: Ui,
}

/// Runs the command `cli` names.
///
/// # Errors
/// Whatever the command fails with, ready to print.
pub(crate) fn run(cli: &Cli) -> Result<(), Failure> {
    let path = crate::paths::store_path(cli.store.as_deref())?;
    tracing::debug!(store = %path.display(), "keystore path");
    let mut ctx = Ctx {
        cli,
        path,
        ui: Ui::new(cli.passphrase_fd, cli.recovery_key_file.as_deref()),
    };
    match &cli.command {
        Command::Init(args) => setup::init(&mut ctx, args),
        Command::Status => setup::status(&ctx),
        Command::Enroll(cmd) => setup::enroll(&mut ctx, cmd),
        Command::Protectors(cmd) => setup::protectors(&ctx, cmd),
        Command::Master(cmd) => setup::master(&ctx, cmd),
        Command::Key(cmd) => keys::run(&ctx, cmd),
        Command::Encrypt(args) => data::encrypt(&ctx, args),
        Command::Decrypt(args) => data::decrypt(&ctx, args),
        Command::Sign(args) => data::sign(&ctx, args),
        Command::Verify(args) => data::verify(&ctx, args),
        Command::ExportPublic(args) => data::export_public(&ctx, args),
        Command::Audit(cmd) => audit::run(&ctx, cmd),
    }
}

/// The software protectors; hardware backends join here as they land.
fn backends() -> Backends {
    Backends::software()
}

impl Ctx<'_> {
    /// Opens the keystore, locked.
    ///
    /// # Errors
    /// `StoreNotFound` (checked here first, so that a typo in --store never
    /// creates a file) and whatever [`Service::open`] refuses.
    pub(crate) fn open(&self) -> Result<Service, Failure> {
        if let Ok(false) = self.path.try_exists() {
            return Err(Error::StoreNotFound {
                path: self.path.clone(),
            }
            .into());
        }
        Service::open(&self.path, backends()).map_err(|e| self.ui.explain(e))
    }

    /// Maps a Service result, explaining a secret we could not ask for.
    pub(crate) fn check<T>(&self, result: keyward_kms::Result<T>) -> Result<T, Failure> {
        result.map_err(|e| self.ui.explain(e))
    }

    /// Unlocks the keystore with the protector the supplied secrets point
    /// at; with none supplied, asks on the terminal which protector to use.
    /// `new_passphrase` reserves the passphrase source for a passphrase
    /// being enrolled, so the unlock must use something else.
    ///
    /// # Errors
    /// No secret and no terminal (exit 3), and the Service's unlock errors.
    pub(crate) fn unlock(
        &self,
        service: &mut Service,
        new_passphrase: bool,
    ) -> Result<(), Failure> {
        if service.is_unlocked() {
            return Ok(());
        }
        let with = match self.ui.supplied_kind(!new_passphrase) {
            Some(kind) => UnlockWith::Kind(kind),
            None if self.ui.interactive() => {
                let protectors = self.check(service.protectors())?;
                match protectors.as_slice() {
                    [] => UnlockWith::Any,
                    [only] => UnlockWith::Id(only.id),
                    many => {
                        let choices: Vec<(u32, String)> = many
                            .iter()
                            .map(|p| (p.id, format!("{} '{}' (id {})", p.kind, p.label, p.id)))
                            .collect();
                        UnlockWith::Id(
                            self.ui
                                .choose("Unlock the keystore with which protector?", &choices)?,
                        )
                    }
                }
            }
            None if new_passphrase && self.ui.has_passphrase_source() => {
                return Err(Failure::new(
                    Exit::Auth,
                    "the keystore must be unlocked with the recovery key to enroll a passphrase \
                     without a terminal",
                )
                .hint(
                    "pass --recovery-key-file FILE or KEYWARD_RECOVERY_KEY; --passphrase-fd or \
                     KEYWARD_PASSPHRASE gives the new passphrase",
                ));
            }
            None => {
                return Err(Failure::new(
                    Exit::Auth,
                    "the keystore is locked and no secret was supplied to unlock it",
                )
                .hint(UNLOCK_HINT));
            }
        };
        let info = self.check(service.unlock(with, &self.ui))?;
        tracing::info!(protector = info.id, kind = %info.kind, "unlocked");
        Ok(())
    }

    /// Runs `op`; if the Service says it needs the master key, unlocks and
    /// runs it once more. For operations whose need for the master key is
    /// the Service's call (retire, remove a protector), so that we never ask
    /// for a secret that is not needed.
    pub(crate) fn with_unlock<T>(
        &self,
        service: &mut Service,
        mut op: impl FnMut(&mut Service) -> keyward_kms::Result<T>,
    ) -> Result<T, Failure> {
        match op(service) {
            Err(Error::Locked) => {
                self.unlock(service, false)?;
                self.check(op(service))
            }
            other => self.check(other),
        }
    }

    /// `--json` was given.
    pub(crate) fn json(&self) -> bool {
        self.cli.json
    }
}
