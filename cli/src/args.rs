//! Command-line arguments (clap derive).
//!
//! There is deliberately no argument that takes a secret: passphrases,
//! recovery keys and device PINs come from a terminal prompt, a file
//! descriptor, a file or the environment (see [`crate::ui`]), never from
//! argv, where every user of the machine can read them in `/proc`.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use keyward_kms::backend::options::{
    Argon2Options, Pcr, PivPinPolicy, PivSlot, PivTouchPolicy, Pkcs11Mode, Pkcs11Options,
    Pkcs11Sign, TpmOptions, YubikeyOptions,
};
use keyward_kms::{BackendKind, DataClass, EnrollOptions, KeyName, KeyPurpose};

/// Help heading of the options every command takes.
const GLOBAL: &str = "Global options";
/// Help heading of the options that choose how to unlock.
const UNLOCK: &str = "Unlock options";
/// Help heading of the options that find hardware.
const HARDWARE: &str = "Hardware options";

/// Shown at the end of `keyward --help`; the same table is in docs/CLI.md.
const EXIT_CODES_HELP: &str = "\
Secrets are never command-line arguments. To unlock, keyward reads:
  a passphrase   from --passphrase-fd N or KEYWARD_PASSPHRASE
  a recovery key from --recovery-key-file FILE or KEYWARD_RECOVERY_KEY
  a device PIN   from --pin-fd N or KEYWARD_PIN (TPM, PKCS#11 token, YubiKey)
or, with none of these, asks on the terminal.

Exit codes:
  0    success
  1    failure not covered below (I/O error, cancelled prompt)
  2    usage error (bad arguments, invalid key name)
  3    authentication failed or needed (wrong passphrase, PIN or recovery key; locked)
  4    not found (keystore, key, key version, protector)
  5    data integrity (decryption failed, truncated data, bad signature, tampered audit log)
  6    refused by policy (retired version, last protector, data class, existing store or key)
  7    device or hardware error
  8    keystore unusable (busy, damaged, too new, unsafe permissions, audit write failed)
  101  internal error (a bug in keyward)
  141  standard output closed early (e.g. piped into `head`)

See docs/CLI.md for details.";

/// keyward: hardware-backed key management for a local-first assistant.
#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version,
    about = "keyward: hardware-backed key management for a local-first assistant",
    after_help = EXIT_CODES_HELP
)]
pub(crate) struct Cli {
    /// Keystore file [default: $XDG_DATA_HOME/keyward/keystore.db, else
    /// ~/.local/share/keyward/keystore.db]
    #[arg(long, global = true, env = "KEYWARD_STORE", value_name = "PATH", help_heading = GLOBAL)]
    pub(crate) store: Option<PathBuf>,

    /// Print machine-readable JSON instead of text
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub(crate) json: bool,

    /// More diagnostics on stderr (-v, -vv, -vvv); RUST_LOG overrides
    #[arg(short, long, global = true, action = ArgAction::Count, help_heading = GLOBAL)]
    pub(crate) verbose: u8,

    /// Read the passphrase from file descriptor N (up to the first newline)
    #[arg(long, global = true, value_name = "N", help_heading = GLOBAL,
          value_parser = clap::value_parser!(i32).range(0..))]
    pub(crate) passphrase_fd: Option<i32>,

    /// Read the recovery key from FILE
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    pub(crate) recovery_key_file: Option<PathBuf>,

    /// Read the PIN of a hardware protector (TPM, PKCS#11 token, YubiKey) from file
    /// descriptor N (up to the first newline); KEYWARD_PIN also gives one
    #[arg(long, global = true, value_name = "N", help_heading = GLOBAL,
          value_parser = clap::value_parser!(i32).range(0..))]
    pub(crate) pin_fd: Option<i32>,

    /// Unlock with this protector (see `keyward protectors list`). With
    /// `enroll ... --replace`: the protector to replace. With `sign` or
    /// `export-public` and no key name: the device key to use
    #[arg(long, global = true, value_name = "ID", help_heading = UNLOCK,
          conflicts_with = "with")]
    pub(crate) protector: Option<u32>,

    /// Unlock with a protector of this kind
    #[arg(long, global = true, value_enum, value_name = "KIND", help_heading = UNLOCK)]
    pub(crate) with: Option<WithArg>,

    /// TPM to use, as a tpm2-tss TCTI (device:/dev/tpmrm0,
    /// swtpm:host=127.0.0.1,port=2321) [default: the one recorded at
    /// enrollment, else device:/dev/tpmrm0]
    #[arg(long, global = true, env = "KEYWARD_TPM_TCTI", value_name = "TCTI",
          help_heading = HARDWARE)]
    pub(crate) tcti: Option<String>,

    /// PKCS#11 module (shared library) [default: the URI's module-path at
    /// enrollment, else the one recorded at enrollment]
    #[arg(long, global = true, env = "KEYWARD_PKCS11_MODULE", value_name = "PATH",
          help_heading = HARDWARE)]
    pub(crate) module: Option<PathBuf>,

    /// The command to run
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a keystore protected by a new recovery key
    Init(InitArgs),
    /// Show the keystore's state
    Status,
    /// Enroll another protector (a way to unlock the keystore)
    #[command(subcommand)]
    Enroll(EnrollCommand),
    /// List or remove protectors
    #[command(subcommand)]
    Protectors(ProtectorsCommand),
    /// Create, list, show, rotate and retire named keys
    #[command(subcommand)]
    Key(KeyCommand),
    /// Encrypt data with a named key (stdin to stdout unless -i/-o)
    Encrypt(EncryptArgs),
    /// Decrypt keyward data (the key is named in the data)
    Decrypt(DecryptArgs),
    /// Sign data with a signing key, or with a device key (--protector ID)
    Sign(SignArgs),
    /// Verify a keyward signature
    Verify(VerifyArgs),
    /// Print the public key of a signing key, or of a device key
    /// (--protector ID), as PEM
    ExportPublic(ExportPublicArgs),
    /// Master-key operations
    #[command(subcommand)]
    Master(MasterCommand),
    /// Read and verify the audit log
    #[command(subcommand)]
    Audit(AuditCommand),
    /// YubiKey maintenance
    #[command(subcommand)]
    Yubikey(YubikeyCommand),
    /// Unlock the running daemon (`keyward serve`) for a session
    Unlock(UnlockArgs),
    /// Lock the running daemon: it forgets the master key and every cached
    /// key, and logs out of its devices
    Lock,
    /// Add, list and revoke the daemon's client applications
    #[command(subcommand)]
    Client(ClientCommand),
    /// Rotate every key whose rotation period has elapsed (for cron or a
    /// systemd timer)
    Rotate(RotateArgs),
    /// Follow the daemon's security events (unlocks, failures, enrollments,
    /// rotations, clients)
    Events(EventsArgs),
    /// Re-encrypt keyward data to its key's primary version without
    /// showing the plaintext
    Rewrap(RewrapArgs),
    /// Generate or unwrap data keys (envelope encryption)
    #[command(subcommand)]
    Datakey(DatakeyCommand),
    /// Run the key service for this keystore on a Unix socket (HTTP/JSON
    /// API, docs/API.md); starts locked
    Serve(ServeArgs),
    /// Print a shell completion script (needs no keystore)
    Completions(CompletionsArgs),
    /// Print the manual page as roff, or write one page per command into a
    /// directory (needs no keystore)
    Man(ManArgs),
}

/// `keyward unlock`.
#[derive(Debug, Args)]
pub(crate) struct UnlockArgs {
    /// Lock again after this long without a key operation (e.g. 10m);
    /// only shorter than the daemon's own setting
    #[arg(long, value_name = "DUR", value_parser = crate::render::parse_duration)]
    pub(crate) idle_timeout: Option<u64>,
    /// Lock again this long after unlocking, whatever happens (e.g. 2h);
    /// only shorter than the daemon's own setting
    #[arg(long, value_name = "DUR", value_parser = crate::render::parse_duration)]
    pub(crate) absolute_timeout: Option<u64>,
}

/// `keyward client ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Add a client and print its token (shown once; give it to the
    /// application through a file or its environment)
    Add {
        /// Client name (1-64 of A-Z a-z 0-9 . _ -)
        name: String,
        /// Operations it may perform: encrypt, decrypt, rewrap, datakey,
        /// sign, verify, keys (comma-separated)
        #[arg(long, value_name = "OPS", value_delimiter = ',', required = true)]
        allow: Vec<String>,
        /// Keys it may use (comma-separated; '*' for every key)
        #[arg(long, value_name = "KEYS", value_delimiter = ',', required = true)]
        keys: Vec<String>,
        /// Write the token to FILE (mode 0600, never overwritten) instead
        /// of standard output
        #[arg(long, value_name = "FILE")]
        token_out: Option<PathBuf>,
    },
    /// List clients and their grants
    List,
    /// Revoke a client's token, or every client's (--all); takes effect at
    /// once, on open connections too
    Revoke {
        /// Client name
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Revoke every client
        #[arg(long)]
        all: bool,
    },
}

/// `keyward rotate`.
#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    /// Rotate the keys whose rotation period has elapsed (the only mode)
    #[arg(long, required = true)]
    pub(crate) due: bool,
}

/// `keyward events`.
#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Start after this audit sequence number [default: only new events]
    #[arg(long, value_name = "SEQ")]
    pub(crate) since: Option<u64>,
    /// Stop after this many events
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
}

/// `keyward rewrap`.
#[derive(Debug, Args)]
pub(crate) struct RewrapArgs {
    /// Context given at encryption (kept)
    #[arg(long, default_value = "", value_name = "STR")]
    pub(crate) context: String,
    /// Input file [default: stdin]
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: Option<PathBuf>,
    /// Output file, written atomically [default: stdout]
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: Option<PathBuf>,
    /// Write binary output even when stdout is a terminal
    #[arg(long)]
    pub(crate) force: bool,
}

/// `keyward datakey ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum DatakeyCommand {
    /// Make a random 256-bit data key: the key (raw bytes) to -o or stdout,
    /// and the key encrypted under KEY to --wrapped-out
    Generate {
        /// Key that wraps the data key
        #[arg(long, value_parser = parse_key_name)]
        key: KeyName,
        /// Context bound to the wrapped key; unwrap needs the same one
        #[arg(long, default_value = "", value_name = "STR")]
        context: String,
        /// Where to write the wrapped key (created 0600, never overwritten)
        #[arg(long, value_name = "FILE")]
        wrapped_out: PathBuf,
        /// Where to write the plaintext key [default: stdout]
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Write the key even when stdout is a terminal
        #[arg(long)]
        force: bool,
    },
    /// Recover a data key from its wrapped form
    Unwrap {
        /// Context given at generation
        #[arg(long, default_value = "", value_name = "STR")]
        context: String,
        /// The wrapped key [default: stdin]
        #[arg(short, long, value_name = "IN")]
        input: Option<PathBuf>,
        /// Where to write the plaintext key [default: stdout]
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Write the key even when stdout is a terminal
        #[arg(long)]
        force: bool,
    },
}

/// `keyward serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
The daemon starts locked: unlock it with `keyward unlock` or POST /v1/unlock.
It locks again on `keyward lock`, SIGHUP, the idle timeout and the absolute
timeout; SIGTERM and SIGINT stop it cleanly (requests in flight finish, the
keystore is locked, the socket removed). Only processes of the user running
it may connect; client applications use tokens from `keyward client add`.
One daemon serves a keystore: a second `keyward serve` on it exits with 8.
--tcti and --module set the hardware its protectors use; the secret options
are not used (each unlock request carries its secrets). It prints
`keyward: serving STORE on SOCKET (locked)` to stderr when ready.")]
pub(crate) struct ServeArgs {
    /// Socket to listen on [default: $XDG_RUNTIME_DIR/keyward/keyward.sock,
    /// else /run/user/UID/keyward/keyward.sock]; its directory is created
    /// with mode 0700
    #[arg(long, env = "KEYWARD_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Lock after this long without a successful key operation (e.g. 90s,
    /// 15m, 8h); an unlock may ask for less, never more
    #[arg(long, value_name = "DUR", default_value = "15m",
          value_parser = keyward_daemon::parse_duration)]
    pub(crate) idle_timeout: u64,
    /// Lock this long after unlocking, whatever happens (e.g. 8h); an unlock
    /// may ask for less, never more
    #[arg(long, value_name = "DUR", default_value = "8h",
          value_parser = keyward_daemon::parse_duration)]
    pub(crate) absolute_timeout: u64,
    /// While unlocked, rotate the keys whose rotation period has passed this
    /// often
    #[arg(long, value_name = "DUR", default_value = "60s",
          value_parser = keyward_daemon::parse_duration)]
    pub(crate) check_interval: u64,
    /// A request head must arrive within this of its first byte (tests)
    #[arg(long, value_name = "DUR", default_value = "10s", hide = true,
          value_parser = keyward_daemon::parse_duration)]
    pub(crate) header_timeout: u64,
    /// A request body must arrive within this (tests)
    #[arg(long, value_name = "DUR", default_value = "30s", hide = true,
          value_parser = keyward_daemon::parse_duration)]
    pub(crate) body_timeout: u64,
    /// Idle keep-alive connections are closed after this (tests)
    #[arg(long, value_name = "DUR", default_value = "60s", hide = true,
          value_parser = keyward_daemon::parse_duration)]
    pub(crate) keepalive_timeout: u64,
    /// Connections served at once; more wait in the kernel backlog (tests)
    #[arg(long, value_name = "N", default_value_t = 512, hide = true,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub(crate) max_connections: u32,
    /// How often the socket's mode and identity are checked (tests)
    #[arg(long, value_name = "DUR", default_value = "2s", hide = true,
          value_parser = keyward_daemon::parse_duration)]
    pub(crate) watchdog_interval: u64,
}

/// `keyward yubikey ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum YubikeyCommand {
    /// Replace the factory PIN and PUK (new ones from --pin-fd / KEYWARD_PIN
    /// and --puk-fd / KEYWARD_PUK, or asked twice) and the default
    /// management key (by a random one stored PIN-protected on the card)
    Setup(YubikeySetupArgs),
}

/// `keyward yubikey setup`.
#[derive(Debug, Args)]
pub(crate) struct YubikeySetupArgs {
    /// Serial of the YubiKey [default: the only one connected]
    #[arg(long, value_name = "N")]
    pub(crate) serial: Option<u32>,
    /// Read the new PUK from file descriptor N (up to the first newline);
    /// KEYWARD_PUK also gives one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub(crate) puk_fd: Option<i32>,
}

/// `keyward init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Also enroll a passphrase (from --passphrase-fd, KEYWARD_PASSPHRASE or
    /// a prompt)
    #[arg(long)]
    pub(crate) passphrase: bool,

    /// Write the new recovery key to FILE (created with mode 0600; never
    /// overwritten) instead of showing it on the terminal. Required when
    /// there is no terminal.
    #[arg(long, value_name = "FILE")]
    pub(crate) recovery_key_out: Option<PathBuf>,

    /// Argon2 parameters of the passphrase (with --passphrase)
    #[command(flatten)]
    pub(crate) argon2: Argon2Args,
}

/// `keyward enroll ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum EnrollCommand {
    /// Enroll a new recovery key (shown once)
    Recovery {
        /// Label shown in `keyward protectors list`
        #[arg(long, default_value = "recovery")]
        label: String,
        /// Write the new recovery key to FILE (mode 0600, never overwritten)
        /// instead of showing it. Required when there is no terminal.
        #[arg(long, value_name = "FILE")]
        recovery_key_out: Option<PathBuf>,
    },
    /// Enroll a passphrase (from --passphrase-fd, KEYWARD_PASSPHRASE or a
    /// prompt); unlock with the recovery key
    Passphrase {
        /// Label shown in `keyward protectors list`
        #[arg(long, default_value = "passphrase")]
        label: String,
        /// Argon2 parameters
        #[command(flatten)]
        argon2: Argon2Args,
    },
    /// Enroll this machine's TPM 2.0 (the new PIN from --pin-fd,
    /// KEYWARD_PIN or a prompt, asked twice); unlock with another protector
    Tpm(EnrollTpmArgs),
    /// Enroll a PKCS#11 token or HSM (its user PIN from --pin-fd,
    /// KEYWARD_PIN or a prompt); unlock with another protector
    Pkcs11(EnrollPkcs11Args),
    /// Enroll a YubiKey over PIV (its PIN from --pin-fd, KEYWARD_PIN or a
    /// prompt; run `keyward yubikey setup` first); unlock with another
    /// protector
    Yubikey(EnrollYubikeyArgs),
}

/// `keyward enroll yubikey`.
#[derive(Debug, Args)]
pub(crate) struct EnrollYubikeyArgs {
    /// Serial of the YubiKey [default: the only one connected]
    #[arg(long, value_name = "N")]
    pub(crate) serial: Option<u32>,
    /// Retired PIV slot for the new key, 82..95 (hex) [default: the first
    /// empty one]
    #[arg(long, value_name = "SLOT", value_parser = checked::<PivSlot>)]
    pub(crate) slot: Option<PivSlot>,
    /// When the YubiKey wants a touch [default: always]
    #[arg(long, value_enum, value_name = "WHEN")]
    pub(crate) touch: Option<TouchArg>,
    /// When the YubiKey wants the PIN [default: once per session]
    #[arg(long, value_enum, value_name = "WHEN")]
    pub(crate) pin_policy: Option<PinPolicyArg>,
    /// Replace a key already in --slot (it is destroyed)
    #[arg(long, requires = "slot")]
    pub(crate) overwrite: bool,
    /// Label shown in `keyward protectors list`
    #[arg(long, default_value = "yubikey")]
    pub(crate) label: String,
    /// Replace the enrolled YubiKey protector (one transaction);
    /// --protector ID picks it when several are enrolled
    #[arg(long)]
    pub(crate) replace: bool,
}

impl EnrollYubikeyArgs {
    /// The options of the YubiKey backend.
    pub(crate) fn options(&self) -> EnrollOptions {
        EnrollOptions::Yubikey(YubikeyOptions {
            slot: self.slot,
            pin_policy: self.pin_policy.map(Into::into).unwrap_or_default(),
            touch: self.touch.map(Into::into).unwrap_or_default(),
            overwrite: self.overwrite,
        })
    }
}

/// Parses an enroll option's value with the check of its kms type; clap
/// shows the message after "invalid value".
fn checked<T: std::str::FromStr<Err = keyward_kms::Error>>(text: &str) -> Result<T, String> {
    text.parse().map_err(|e| match e {
        keyward_kms::Error::InvalidArgument { what } => what,
        other => other.to_string(),
    })
}

/// YubiKey touch policy on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TouchArg {
    /// A touch for every operation
    Always,
    /// One touch is good for 15 seconds
    Cached,
    /// No touch
    Never,
}

impl From<TouchArg> for PivTouchPolicy {
    fn from(touch: TouchArg) -> Self {
        match touch {
            TouchArg::Always => Self::Always,
            TouchArg::Cached => Self::Cached,
            TouchArg::Never => Self::Never,
        }
    }
}

/// YubiKey PIN policy on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PinPolicyArg {
    /// Once per card session
    Once,
    /// Before every operation
    Always,
}

impl From<PinPolicyArg> for PivPinPolicy {
    fn from(pin: PinPolicyArg) -> Self {
        match pin {
            PinPolicyArg::Once => Self::Once,
            PinPolicyArg::Always => Self::Always,
        }
    }
}

/// `keyward enroll tpm`.
#[derive(Debug, Args)]
pub(crate) struct EnrollTpmArgs {
    /// Label shown in `keyward protectors list`
    #[arg(long, default_value = "tpm")]
    pub(crate) label: String,
    /// Protect the TPM key with a PIN (the default)
    #[arg(long, conflicts_with = "no_pin")]
    pub(crate) pin: bool,
    /// No PIN: the TPM unlocks on its own (bind it to --pcrs)
    #[arg(long)]
    pub(crate) no_pin: bool,
    /// Bind the key to these SHA-256 PCRs (e.g. 7,11): it stops working
    /// when they change (firmware, boot loader, Secure Boot)
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = checked::<Pcr>)]
    pub(crate) pcrs: Vec<Pcr>,
    /// Replace the enrolled TPM protector (one transaction), e.g. after a
    /// firmware update changed the PCRs; --protector ID picks it when
    /// several are enrolled
    #[arg(long)]
    pub(crate) replace: bool,
}

impl EnrollTpmArgs {
    /// Whether the new key gets a PIN.
    pub(crate) fn with_pin(&self) -> bool {
        !self.no_pin
    }

    /// The options of the TPM backend.
    pub(crate) fn options(&self) -> EnrollOptions {
        EnrollOptions::Tpm(TpmOptions {
            pin: self.with_pin(),
            pcrs: self.pcrs.iter().copied().collect(),
        })
    }
}

/// `keyward enroll pkcs11`.
#[derive(Debug, Args)]
pub(crate) struct EnrollPkcs11Args {
    /// The token (and optionally the key) as an RFC 7512 PKCS#11 URI, e.g.
    /// 'pkcs11:token=MyToken' (?module-path=PATH names the module)
    #[arg(long, value_name = "URI")]
    pub(crate) uri: String,
    /// ecdh: a P-256 key pair on the token (default when the token can);
    /// aes-gcm: an AES-256 key, for tokens without ECDH
    #[arg(long, value_enum)]
    pub(crate) mode: Option<ModeArg>,
    /// Also make an Ed25519 key to sign with (ed25519); the default signs
    /// with the P-256 key of the ecdh mode
    #[arg(long, value_enum)]
    pub(crate) sign: Option<SignArg>,
    /// Label shown in `keyward protectors list`; the key on the token is
    /// labelled "keyward LABEL"
    #[arg(long, default_value = "pkcs11")]
    pub(crate) label: String,
    /// Replace the enrolled PKCS#11 protector (one transaction);
    /// --protector ID picks it when several are enrolled
    #[arg(long)]
    pub(crate) replace: bool,
}

impl EnrollPkcs11Args {
    /// The options of the PKCS#11 backend.
    pub(crate) fn options(&self) -> EnrollOptions {
        EnrollOptions::Pkcs11(Pkcs11Options {
            mode: self.mode.map(Into::into),
            sign: self.sign.map(Into::into),
        })
    }
}

/// PKCS#11 wrap mode on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
    /// P-256 ECDH (CKM_ECDH1_DERIVE) and the shared ECIES
    Ecdh,
    /// AES-256-GCM on the token (CKM_AES_GCM)
    AesGcm,
}

impl From<ModeArg> for Pkcs11Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Ecdh => Self::Ecdh,
            ModeArg::AesGcm => Self::AesGcm,
        }
    }
}

/// PKCS#11 signing key on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SignArg {
    /// ECDSA P-256 with the ecdh key pair
    Ecdsa,
    /// Ed25519 with a key pair of its own (CKM_EDDSA)
    Ed25519,
}

impl From<SignArg> for Pkcs11Sign {
    fn from(sign: SignArg) -> Self {
        match sign {
            SignArg::Ecdsa => Self::Ecdsa,
            SignArg::Ed25519 => Self::Ed25519,
        }
    }
}

/// `--with`: the kind of protector to unlock with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum WithArg {
    /// A recovery key
    Recovery,
    /// A passphrase
    Passphrase,
    /// The TPM
    Tpm,
    /// A PKCS#11 token
    Pkcs11,
    /// A YubiKey
    Yubikey,
}

impl From<WithArg> for BackendKind {
    fn from(w: WithArg) -> Self {
        match w {
            WithArg::Recovery => Self::Recovery,
            WithArg::Passphrase => Self::Passphrase,
            WithArg::Tpm => Self::Tpm,
            WithArg::Pkcs11 => Self::Pkcs11,
            WithArg::Yubikey => Self::Yubikey,
        }
    }
}

/// Argon2id cost parameters of a passphrase protector. Advanced: the
/// defaults are chosen for this kind of machine; lower values make a
/// stolen keystore cheaper to attack.
#[derive(Debug, Args, Clone, Copy, Default)]
#[command(next_help_heading = "Advanced")]
// `allow`, not `expect`: the workspace may allow this lint globally.
#[allow(
    clippy::struct_field_names,
    reason = "the field names are the flag names"
)]
pub(crate) struct Argon2Args {
    /// Argon2id memory in KiB
    #[arg(long, value_name = "KIB")]
    pub(crate) argon2_m_kib: Option<u32>,
    /// Argon2id passes
    #[arg(long, value_name = "N")]
    pub(crate) argon2_t: Option<u32>,
    /// Argon2id lanes
    #[arg(long, value_name = "N")]
    pub(crate) argon2_p: Option<u32>,
}

impl Argon2Args {
    /// Whether any Argon2 parameter was given.
    pub(crate) fn any(self) -> bool {
        self.options() != Argon2Options::default()
    }

    /// The options of the passphrase backend.
    pub(crate) fn options(self) -> Argon2Options {
        Argon2Options {
            m_kib: self.argon2_m_kib,
            t: self.argon2_t,
            p: self.argon2_p,
        }
    }
}

/// `keyward protectors ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ProtectorsCommand {
    /// List enrolled protectors
    List,
    /// Remove a protector (never the last one); needs an unlock
    Remove {
        /// Protector id (see `keyward protectors list`)
        id: u32,
    },
}

/// Key purpose on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PurposeArg {
    /// AES-256-GCM encryption
    Encrypt,
    /// Ed25519 signatures
    Sign,
}

impl From<PurposeArg> for KeyPurpose {
    fn from(p: PurposeArg) -> Self {
        match p {
            PurposeArg::Encrypt => Self::Encrypt,
            PurposeArg::Sign => Self::Sign,
        }
    }
}

/// Data class on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ClassArg {
    /// Memory only (needs `keyward serve`)
    Secret,
    /// Health, financial: never leaves this device
    Sensitive,
    /// Schedules, contacts: local plus encrypted backup
    Private,
    /// No restriction beyond encryption
    General,
}

impl From<ClassArg> for DataClass {
    fn from(c: ClassArg) -> Self {
        match c {
            ClassArg::Secret => Self::Secret,
            ClassArg::Sensitive => Self::Sensitive,
            ClassArg::Private => Self::Private,
            ClassArg::General => Self::General,
        }
    }
}

/// `keyward key ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a named key (version 1)
    Create {
        /// Key name: 1-64 of a-z 0-9 . _ -, starting with a letter or digit
        #[arg(value_parser = parse_key_name)]
        name: KeyName,
        /// What the key is for
        #[arg(long, value_enum, default_value = "encrypt")]
        purpose: PurposeArg,
        /// Data class, bound into everything encrypted under the key
        #[arg(long, value_enum, default_value = "private")]
        class: ClassArg,
        /// Rotate automatically after this long (e.g. 90d, 12h, 30m, 45s, 2w)
        #[arg(long, value_name = "DUR", value_parser = crate::render::parse_duration)]
        rotation_period: Option<u64>,
        /// Rotate automatically after this many encryptions by one version
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        usage_limit: Option<u64>,
    },
    /// List named keys
    List,
    /// Show a key and its versions
    Show {
        /// Key name
        #[arg(value_parser = parse_key_name)]
        name: KeyName,
    },
    /// Add a new primary version (old versions keep decrypting)
    Rotate {
        /// Key name
        #[arg(value_parser = parse_key_name)]
        name: KeyName,
    },
    /// Refuse to decrypt with versions below a minimum
    Retire {
        /// Key name
        #[arg(value_parser = parse_key_name)]
        name: KeyName,
        /// Versions below this no longer decrypt
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        min_version: u32,
    },
}

/// `keyward encrypt`.
#[derive(Debug, Args)]
pub(crate) struct EncryptArgs {
    /// Key to encrypt with (its primary version)
    #[arg(long, value_parser = parse_key_name)]
    pub(crate) key: KeyName,
    /// Context bound to the ciphertext; decrypt needs the same one
    #[arg(long, default_value = "", value_name = "STR")]
    pub(crate) context: String,
    /// Input file [default: stdin]
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: Option<PathBuf>,
    /// Output file, written atomically [default: stdout]
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: Option<PathBuf>,
    /// Write binary output even when stdout is a terminal
    #[arg(long)]
    pub(crate) force: bool,
}

/// `keyward decrypt`.
#[derive(Debug, Args)]
pub(crate) struct DecryptArgs {
    /// Context given at encryption
    #[arg(long, default_value = "", value_name = "STR")]
    pub(crate) context: String,
    /// Input file [default: stdin]
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: Option<PathBuf>,
    /// Output file, written atomically: it appears only if the whole input
    /// decrypted [default: stdout]
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: Option<PathBuf>,
    /// Print plaintext even when stdout is a terminal
    #[arg(long)]
    pub(crate) force: bool,
}

/// `keyward sign`.
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// Signing key (its primary version). Without it, --protector ID signs
    /// with that protector's device key (a DER ECDSA P-256 signature over
    /// SHA-256, as `openssl dgst -sha256 -verify` checks it)
    #[arg(long, value_parser = parse_key_name)]
    pub(crate) key: Option<KeyName>,
    /// Intended audience, checked by verify (keyward signing keys only)
    #[arg(long, value_name = "A")]
    pub(crate) audience: Option<String>,
    /// Message file [default: stdin]
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: Option<PathBuf>,
    /// Signature file, written atomically [default: stdout]
    #[arg(short, long, value_name = "SIG")]
    pub(crate) output: Option<PathBuf>,
    /// Write the binary signature even when stdout is a terminal
    #[arg(long)]
    pub(crate) force: bool,
}

/// `keyward verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Signature file made by `keyward sign`
    #[arg(long, value_name = "SIG")]
    pub(crate) signature: PathBuf,
    /// Audience the signature must be for
    #[arg(long, default_value = "", value_name = "A")]
    pub(crate) audience: String,
    /// Message file [default: stdin]
    #[arg(short, long, value_name = "IN")]
    pub(crate) input: Option<PathBuf>,
    /// Verify an archived signature: check the key, the signature and the
    /// audience only. Without it, a signature made outside the freshness
    /// window, or whose counter was already accepted from its signer, is
    /// refused (exit 5), and the accepted counter is recorded
    #[arg(long)]
    pub(crate) archived: bool,
}

/// `keyward export-public`.
#[derive(Debug, Args)]
pub(crate) struct ExportPublicArgs {
    /// Signing key name. Without it, --protector ID exports the public key
    /// that protector's device signs with
    #[arg(value_parser = parse_key_name)]
    pub(crate) name: Option<KeyName>,
    /// Version [default: the primary version]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) version: Option<u32>,
}

/// `keyward master ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum MasterCommand {
    /// Replace the master key and re-wrap everything under the new one
    Rotate,
}

/// `keyward audit ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Print audit records, oldest first
    Show {
        /// Start at this sequence number
        #[arg(long, value_name = "N", default_value_t = 1)]
        since: u64,
    },
    /// Verify the hash chain of the whole audit log
    Verify,
}

/// clap value parser for key names, so a bad name is a usage error (exit 2)
/// with the reason.
fn parse_key_name(s: &str) -> Result<KeyName, String> {
    KeyName::new(s).map_err(|e| match e {
        keyward_kms::Error::InvalidKeyName { reason, .. } => reason.to_owned(),
        other => other.to_string(),
    })
}

/// `keyward completions`.
#[derive(Debug, Args)]
#[command(after_help = "\
Install for every user (as root; Debian's paths):
  keyward completions bash > /usr/share/bash-completion/completions/keyward
  keyward completions zsh  > /usr/share/zsh/vendor-completions/_keyward
  keyward completions fish > /usr/share/fish/vendor_completions.d/keyward.fish
For one user: ~/.local/share/bash-completion/completions/keyward,
~/.config/fish/completions/keyward.fish, or _keyward in a directory on $fpath.")]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub(crate) shell: ShellArg,
}

/// A shell `keyward completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShellArg {
    /// GNU Bash (bash-completion)
    Bash,
    /// Z shell
    Zsh,
    /// fish
    Fish,
}

/// `keyward man`.
#[derive(Debug, Args)]
#[command(after_help = "\
Read it now:   keyward man | man -l -
Install pages: keyward man --out-dir /usr/share/man/man1")]
pub(crate) struct ManArgs {
    /// Write keyward.1 and one page per command (keyward-enroll-tpm.1, ...)
    /// into DIR, and print their paths, instead of printing keyward.1
    #[arg(long, value_name = "DIR")]
    pub(crate) out_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keyward").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli = parse(&["key", "list", "--json", "--store", "/tmp/x.db", "-vv"]).expect("parse");
        assert!(cli.json);
        assert_eq!(cli.verbose, 2);
        assert_eq!(
            cli.store.as_deref(),
            Some(std::path::Path::new("/tmp/x.db"))
        );
    }

    #[test]
    fn no_secret_flags_exist() {
        for args in [
            &["--passphrase", "hunter2", "status"][..],
            &["status", "--passphrase=hunter2"],
            &["decrypt", "--recovery-key", "ABCD"],
            &["enroll", "passphrase", "--passphrase", "x"],
            &["status", "--pin", "123456"],
        ] {
            let err = parse(args).expect_err("must be refused");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{args:?}"
            );
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn key_names_are_validated_at_parse_time() {
        let err = parse(&["key", "create", "Bad/Name"]).expect_err("bad name");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("only a-z, 0-9"), "{err}");
        let cli = parse(&[
            "key",
            "create",
            "notes",
            "--purpose",
            "sign",
            "--class",
            "general",
        ])
        .expect("parse");
        match cli.command {
            Command::Key(KeyCommand::Create {
                name,
                purpose,
                class,
                rotation_period,
                usage_limit,
            }) => {
                assert_eq!(name.as_str(), "notes");
                assert!(matches!(purpose, PurposeArg::Sign));
                assert_eq!(class, ClassArg::General);
                assert_eq!(rotation_period, None);
                assert_eq!(usage_limit, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn argon2_options_are_passed_by_name() {
        let cli = parse(&[
            "enroll",
            "passphrase",
            "--argon2-m-kib",
            "1024",
            "--argon2-t",
            "1",
        ])
        .expect("parse");
        match cli.command {
            Command::Enroll(EnrollCommand::Passphrase { label, argon2 }) => {
                assert_eq!(label, "passphrase");
                assert_eq!(
                    argon2.options(),
                    Argon2Options {
                        m_kib: Some(1024),
                        t: Some(1),
                        p: None
                    }
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn hardware_enroll_options_are_the_backends_keys() {
        let cli =
            parse(&["enroll", "tpm", "--pcrs", "7,11", "--no-pin", "--replace"]).expect("parse");
        match cli.command {
            Command::Enroll(EnrollCommand::Tpm(args)) => {
                assert!(args.replace && !args.with_pin());
                assert_eq!(
                    args.options(),
                    EnrollOptions::Tpm(TpmOptions {
                        pin: false,
                        pcrs: "7,11".parse().expect("pcrs")
                    })
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = parse(&["enroll", "tpm"]).expect("parse");
        match cli.command {
            Command::Enroll(EnrollCommand::Tpm(args)) => {
                assert_eq!(args.label, "tpm");
                assert_eq!(args.options(), EnrollOptions::Tpm(TpmOptions::default()));
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = parse(&[
            "enroll",
            "pkcs11",
            "--uri",
            "pkcs11:token=t",
            "--mode",
            "aes-gcm",
            "--sign",
            "ed25519",
        ])
        .expect("parse");
        match cli.command {
            Command::Enroll(EnrollCommand::Pkcs11(args)) => {
                assert_eq!(args.uri, "pkcs11:token=t");
                assert_eq!(
                    args.options(),
                    EnrollOptions::Pkcs11(Pkcs11Options {
                        mode: Some(Pkcs11Mode::AesGcm),
                        sign: Some(Pkcs11Sign::Ed25519)
                    })
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        for bad in [
            &["enroll", "tpm", "--pcrs", "24"][..],
            &["enroll", "tpm", "--pin", "--no-pin"],
            &["enroll", "tpm", "--pin", "1234"],
            &["enroll", "pkcs11", "--mode", "ecdh"],
            &["status", "--with", "tpm", "--protector", "2"],
            &["status", "--pin-fd", "-1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let cli = parse(&["decrypt", "--with", "pkcs11", "--tcti", "swtpm:port=1"]).expect("parse");
        assert_eq!(cli.with, Some(WithArg::Pkcs11));
        assert_eq!(cli.tcti.as_deref(), Some("swtpm:port=1"));
    }

    #[test]
    fn yubikey_enroll_and_setup_options() {
        let cli = parse(&[
            "enroll",
            "yubikey",
            "--serial",
            "12345678",
            "--slot",
            "85",
            "--touch",
            "cached",
            "--pin-policy",
            "always",
            "--overwrite",
        ])
        .expect("parse");
        match cli.command {
            Command::Enroll(EnrollCommand::Yubikey(args)) => {
                assert_eq!(args.serial, Some(12_345_678));
                assert_eq!(args.label, "yubikey");
                assert_eq!(
                    args.options(),
                    EnrollOptions::Yubikey(YubikeyOptions {
                        slot: PivSlot::new(0x85),
                        pin_policy: PivPinPolicy::Always,
                        touch: PivTouchPolicy::Cached,
                        overwrite: true,
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["enroll", "yubikey"]).expect("parse");
        match cli.command {
            Command::Enroll(EnrollCommand::Yubikey(args)) => assert_eq!(
                args.options(),
                EnrollOptions::Yubikey(YubikeyOptions::default())
            ),
            other => panic!("{other:?}"),
        }
        for bad in [
            &["enroll", "yubikey", "--overwrite"][..],
            &["enroll", "yubikey", "--touch", "sometimes"],
            &["enroll", "yubikey", "--slot", "9a"],
            &["enroll", "yubikey", "--serial", "-1"],
            &["yubikey", "setup", "--puk", "12345678"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let cli = parse(&["yubikey", "setup", "--serial", "7", "--puk-fd", "3"]).expect("parse");
        match cli.command {
            Command::Yubikey(YubikeyCommand::Setup(args)) => {
                assert_eq!((args.serial, args.puk_fd), (Some(7), Some(3)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&["decrypt", "--with", "yubikey"])
                .expect("parse")
                .with,
            Some(WithArg::Yubikey)
        );
    }

    #[test]
    fn rotation_period_parses_units() {
        let cli = parse(&["key", "create", "k", "--rotation-period", "90d"]).expect("parse");
        match cli.command {
            Command::Key(KeyCommand::Create {
                rotation_period, ..
            }) => assert_eq!(rotation_period, Some(90 * 86_400)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse(&["key", "create", "k", "--rotation-period", "soon"]).is_err());
    }

    #[test]
    fn zero_is_refused_where_meaningless() {
        assert!(parse(&["key", "retire", "k", "--min-version", "0"]).is_err());
        assert!(parse(&["key", "create", "k", "--usage-limit", "0"]).is_err());
        assert!(parse(&["export-public", "k", "--version", "0"]).is_err());
        assert!(parse(&["status", "--passphrase-fd", "-1"]).is_err());
    }
}
