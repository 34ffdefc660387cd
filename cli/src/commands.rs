//! Runs one command: finds the keystore, opens the [`Service`], unlocks it
//! when the operation needs the master key, and prints the result.

mod audit;
mod clients;
mod data;
mod device;
mod keys;
mod packaging;
mod serve;
mod session;
mod setup;
mod yubikey;

use std::path::PathBuf;
#[cfg(any(feature = "tpm", feature = "pkcs11", feature = "yubikey"))]
use std::sync::Arc;

use keyward_kms::service::{Backends, Options, ProtectorInfo, UnlockRequest, UnlockWith};
use keyward_kms::{BackendKind, Error, Service};

use crate::args::{Cli, Command};
use crate::failure::{Exit, Failure, UNLOCK_HINT, UNLOCK_HINT_HARDWARE};
use crate::ui::{Reserve, Ui};

/// What every command needs: the parsed arguments, the keystore path, the
/// user interface and the backends.
pub(crate) struct Ctx<'a> {
    /// Parsed arguments.
    pub(crate) cli: &'a Cli,
    /// Keystore path.
    pub(crate) path: PathBuf,
    /// Secret sources, prompts, notices.
    pub(crate) ui: Ui,
    /// The protector backends of this process.
    pub(crate) hardware: Hardware,
}

/// The backends of this process: the software protectors and the hardware
/// backends compiled in, one instance each, shared (`Arc`) by every
/// [`Service`] the command opens. Dropping it logs out of every PKCS#11
/// token this process logged in to: a command's login never outlives it.
pub(crate) struct Hardware {
    backends: Backends,
    #[cfg(feature = "pkcs11")]
    pkcs11: Arc<keyward_backends::pkcs11::Backend>,
    /// The one YubiKey backend of the process: it keeps one card handle
    /// per YubiKey for the whole command (dropping a handle resets the card).
    #[cfg(feature = "yubikey")]
    yubikey: Arc<keyward_backends::yubikey::Backend>,
}

impl Hardware {
    /// The backends, configured from `--tcti` / `KEYWARD_TPM_TCTI` and
    /// `--module` / `KEYWARD_PKCS11_MODULE`. Nothing is opened or loaded
    /// until a protector of the kind is used.
    #[cfg_attr(
        not(any(feature = "tpm", feature = "pkcs11")),
        expect(unused_variables, reason = "only hardware backends take options")
    )]
    fn new(cli: &Cli) -> Self {
        #[cfg_attr(
            not(any(feature = "tpm", feature = "pkcs11", feature = "yubikey")),
            expect(unused_mut, reason = "only hardware backends are added")
        )]
        let mut backends = Backends::software();
        #[cfg(feature = "tpm")]
        {
            use keyward_backends::tpm;
            let tpm = match cli.tcti.as_deref().filter(|t| !t.is_empty()) {
                Some(tcti) => tpm::Backend::with_tcti(tcti),
                None => tpm::Backend::new(),
            };
            backends.add(Arc::new(tpm));
        }
        #[cfg(feature = "pkcs11")]
        let pkcs11 = {
            use keyward_backends::pkcs11;
            let backend = Arc::new(pkcs11::Backend::new(pkcs11::Options {
                module: cli.module.clone().filter(|m| !m.as_os_str().is_empty()),
                mode: None,
            }));
            backends.add(backend.clone());
            backend
        };
        #[cfg(feature = "yubikey")]
        let yubikey = {
            let backend = Arc::new(keyward_backends::yubikey::Backend::new());
            backends.add(backend.clone());
            backend
        };
        Self {
            backends,
            #[cfg(feature = "pkcs11")]
            pkcs11,
            #[cfg(feature = "yubikey")]
            yubikey,
        }
    }

    /// The YubiKey backend (`keyward yubikey setup`).
    #[cfg(feature = "yubikey")]
    pub(crate) fn yubikey(&self) -> &keyward_backends::yubikey::Backend {
        &self.yubikey
    }

    /// The registry to open a [`Service`] with (shares the instances).
    pub(crate) fn backends(&self) -> Backends {
        self.backends.clone()
    }
}

impl Drop for Hardware {
    fn drop(&mut self) {
        // `keyward lock` does not exist yet; until the daemon holds logins,
        // every command ends logged out.
        #[cfg(feature = "pkcs11")]
        self.pkcs11.logout();
    }
}

/// Runs the command `cli` names.
///
/// # Errors
/// Whatever the command fails with, ready to print.
pub(crate) fn run(cli: &Cli) -> Result<(), Failure> {
    // Generated from the argument definitions alone: no keystore path, HOME
    // or device is looked up (packagers run these in a build root).
    match &cli.command {
        Command::Completions(args) => return packaging::completions(args),
        Command::Man(args) => return packaging::man(args),
        _ => {}
    }
    let path = crate::paths::store_path(cli.store.as_deref())?;
    tracing::debug!(store = %path.display(), "keystore path");
    let mut ctx = Ctx {
        cli,
        path,
        ui: Ui::new(
            cli.passphrase_fd,
            cli.recovery_key_file.as_deref(),
            cli.pin_fd,
        ),
        hardware: Hardware::new(cli),
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
        Command::Yubikey(cmd) => yubikey::run(&ctx, cmd),
        Command::Unlock(args) => session::unlock(&ctx, args),
        Command::Lock => session::lock(&ctx),
        Command::Events(args) => session::events(&ctx, args),
        Command::Client(cmd) => clients::run(&ctx, cmd),
        Command::Rotate(args) => keys::rotate_due(&ctx, args),
        Command::Rewrap(args) => data::rewrap(&ctx, args),
        Command::Datakey(cmd) => data::datakey(&ctx, cmd),
        Command::Serve(args) => serve::run(&ctx, args),
        Command::Completions(_) | Command::Man(_) => Ok(()), // answered above
    }
}

impl Ctx<'_> {
    /// Opens the keystore, locked.
    ///
    /// # Errors
    /// `StoreNotFound` (checked here first, so that a typo in --store never
    /// creates a file) and whatever [`Service::open`] refuses.
    pub(crate) fn open(&self) -> Result<Service, Failure> {
        self.open_with(Options::default())
    }

    /// [`Ctx::open`] working as `options` say (`keyward serve`: the
    /// daemon's).
    ///
    /// # Errors
    /// As [`Ctx::open`].
    pub(crate) fn open_with(&self, options: Options) -> Result<Service, Failure> {
        if let Ok(false) = self.path.try_exists() {
            return Err(Error::StoreNotFound {
                path: self.path.clone(),
            }
            .into());
        }
        Service::open_with(&self.path, self.hardware.backends(), options)
            .map_err(|e| self.ui.explain(e))
    }

    /// Maps a Service result, explaining a secret we could not ask for.
    pub(crate) fn check<T>(&self, result: keyward_kms::Result<T>) -> Result<T, Failure> {
        result.map_err(|e| self.ui.explain(e))
    }

    /// Unlocks the keystore with the protector `--protector` or `--with`
    /// names, else the one the supplied secrets point at; with none
    /// supplied, asks on the terminal which protector to use. `reserve`
    /// keeps a secret source for the protector being enrolled, so the
    /// unlock must use something else.
    ///
    /// # Errors
    /// No secret and no terminal (exit 3), an ambiguous PIN (exit 2), and
    /// the Service's unlock errors.
    pub(crate) fn unlock(&self, service: &mut Service, reserve: Reserve) -> Result<(), Failure> {
        self.unlock_with(service, reserve, self.cli.protector)
    }

    /// [`Ctx::unlock`] with the `--protector` choice given explicitly
    /// (`None` when the command uses `--protector` for something else).
    pub(crate) fn unlock_with(
        &self,
        service: &mut Service,
        reserve: Reserve,
        protector: Option<u32>,
    ) -> Result<(), Failure> {
        if service.is_unlocked() {
            return Ok(());
        }
        let protectors = self.check(service.protectors())?;
        let with = self.unlock_choice(service, &protectors, reserve, protector)?;
        let kind = match with {
            UnlockWith::Kind(kind) => Some(kind),
            UnlockWith::Id(id) => protectors.iter().find(|p| p.id == id).map(|p| p.kind),
            UnlockWith::Any => None,
        };
        // One PIN source per run: the device being enrolled owns it, and
        // handing it to another device would spend one of that device's
        // tries.
        if reserve == Reserve::Pin
            && self.ui.has_pin_source()
            && kind.is_some_and(BackendKind::is_hardware)
        {
            return Err(Failure::new(
                Exit::Usage,
                "--pin-fd / KEYWARD_PIN gives the PIN of the device being enrolled, so it cannot \
                 also unlock with a device",
            )
            .hint(
                "unlock with the recovery key or a passphrase, or run keyward on a terminal \
                 without a PIN source to type both PINs",
            ));
        }
        let info = service
            .unlock(with, &self.ui)
            .map_err(|e| self.ui.explain_for(&e, kind))?;
        tracing::info!(protector = info.id, kind = %info.kind, "unlocked");
        Ok(())
    }

    /// The daemon serving this keystore, if one runs (docs/API.md). The
    /// owner's commands go through it; they never send a token.
    ///
    /// # Errors
    /// An untrusted socket, a daemon that does not answer.
    pub(crate) fn daemon(&self) -> Result<Option<crate::client::Daemon>, Failure> {
        crate::client::Daemon::for_store(&self.path)
    }

    /// Which protector(s) to unlock with: kms decides from the flags and
    /// the secret supplied ([`Service::choose_unlock`]); when nothing
    /// decides, we ask on the terminal, or say what to supply.
    pub(crate) fn unlock_choice(
        &self,
        service: &Service,
        protectors: &[ProtectorInfo],
        reserve: Reserve,
        protector: Option<u32>,
    ) -> Result<UnlockWith, Failure> {
        let request = UnlockRequest {
            protector,
            kind: self.cli.with.map(Into::into),
            supplied: self.ui.supplied(reserve),
        };
        match service.choose_unlock(&request) {
            Ok(UnlockWith::Any) => {}
            Ok(with) => return Ok(with),
            // A PIN fits one device; sending it to another would spend one
            // of that device's tries.
            Err(e @ Error::PinTarget { .. }) => {
                let no_device = matches!(&e, Error::PinTarget { devices } if devices.is_empty());
                return Err(if no_device {
                    Failure::new(Exit::NotFound, e.to_string()).hint(
                        "`keyward protectors list` shows what is enrolled; supply the secret \
                         of one of those",
                    )
                } else {
                    Failure::new(Exit::Usage, e.to_string())
                        .hint("choose the one the PIN is for with --protector ID or --with KIND")
                });
            }
            Err(e) => return Err(self.ui.explain(e)),
        }
        if self.ui.interactive() {
            return Ok(match protectors {
                [] => UnlockWith::Any,
                [only] => UnlockWith::Id(only.id),
                many => {
                    let choices: Vec<(u32, String)> = many
                        .iter()
                        .map(|p| {
                            let device = p
                                .device_id
                                .as_deref()
                                .map(|d| format!(", {d}"))
                                .unwrap_or_default();
                            (
                                p.id,
                                format!("{} '{}' (id {}{device})", p.kind, p.label, p.id),
                            )
                        })
                        .collect();
                    UnlockWith::Id(
                        self.ui
                            .choose("Unlock the keystore with which protector?", &choices)?,
                    )
                }
            });
        }
        let reserved = match reserve {
            Reserve::Passphrase if self.ui.has_passphrase_source() => Some((
                "enroll a passphrase",
                "--passphrase-fd or KEYWARD_PASSPHRASE gives the new passphrase",
            )),
            Reserve::Pin if self.ui.has_pin_source() => Some((
                "enroll a device",
                "--pin-fd or KEYWARD_PIN gives the PIN of the device being enrolled",
            )),
            _ => None,
        };
        if let Some((what, source)) = reserved {
            let other = if reserve == Reserve::Pin {
                "pass --recovery-key-file FILE, KEYWARD_RECOVERY_KEY, --passphrase-fd N or \
                 KEYWARD_PASSPHRASE"
            } else {
                "pass --recovery-key-file FILE or KEYWARD_RECOVERY_KEY"
            };
            let protector = if reserve == Reserve::Pin {
                "another protector"
            } else {
                "the recovery key"
            };
            return Err(Failure::new(
                Exit::Auth,
                format!(
                    "the keystore must be unlocked with {protector} to {what} without a terminal"
                ),
            )
            .hint(format!("{other}; {source}")));
        }
        Err(Failure::new(
            Exit::Auth,
            "the keystore is locked and no secret was supplied to unlock it",
        )
        .hint(if protectors.iter().any(|p| p.kind.is_hardware()) {
            UNLOCK_HINT_HARDWARE
        } else {
            UNLOCK_HINT
        }))
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
                self.unlock(service, Reserve::Nothing)?;
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
