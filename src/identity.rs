//! The node's long-term identity: one Ed25519 key pair and the X25519 key pair derived from it.
//!
//! The X25519 public key is the node's name on the network (Noise proves it to every
//! peer during the link handshake, see [`crate::proto::handshake`]); its private half is
//! the static key snow's builder is given, and the key for end-to-end agreements
//! ([`Identity::diffie_hellman`]). The Ed25519 key signs what the node says about itself
//! (link-state adverts): the X25519 key is the standard birational map of the Ed25519 one
//! (`SigningKey::to_scalar_bytes`, `VerifyingKey::to_montgomery`, as libsodium and age do), so a
//! verifier that knows a node's X25519 key checks that a signing key belongs to it
//! ([`verify_bound`]) without any further certificate: only the holder of the X25519 secret
//! can sign for it.
//!
//! Start-up code calls [`Identity::load_or_create`] once with the node's data
//! directory: the key is generated on the first start and reused afterwards, so a
//! node keeps its name across restarts. The key file is never silently replaced:
//! if it exists but cannot be parsed, that is an error naming the file. The key file and the
//! data directory must be private to the owner (0600 / 0700) and not symbolic links: a node
//! refuses to start on anything else, with the `chmod` to run.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Name of the key file inside the data directory.
pub const IDENTITY_FILE_NAME: &str = "identity.key";

/// What the key file's content starts with: the key type, so a file is never read as
/// another kind of key.
const IDENTITY_FILE_PREFIX: &str = "ed25519:";

/// Length of the key file's content: the prefix, the 32-byte Ed25519 seed as hex (2 chars
/// per byte) and the trailing `'\n'`.
const IDENTITY_FILE_BYTES: usize = IDENTITY_FILE_PREFIX.len() + 32 * 2 + 1;

/// Upper bound on what is read from an existing key file before declaring it
/// malformed: the real content is 73 bytes, 1 KiB tolerates hand edits
/// (whitespace, CRLF) without reading an arbitrary file into memory.
const IDENTITY_FILE_READ_LIMIT_BYTES: u64 = 1024;

/// Length of a signature ([`Identity::sign`]).
pub const SIGNATURE_BYTES: usize = 64;

/// Unix permission bits of a freshly created data directory (owner only).
#[cfg(unix)]
const DATA_DIR_MODE: u32 = 0o700;

/// Unix permission bits of a freshly created key file (owner read/write only).
#[cfg(unix)]
const IDENTITY_FILE_MODE: u32 = 0o600;

/// Failures of loading, creating or using an [`Identity`].
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The operating system's random number generator failed.
    #[error("operating system random number generator failed: {0}")]
    Random(getrandom::Error),

    /// The data directory could not be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    CreateDir {
        /// The directory that was being created.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// An existing key file could not be read.
    #[error("cannot read identity key file {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// A new key file could not be created or written.
    #[error("cannot write identity key file {}: {source}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// The key file exists but does not hold a key. It is left untouched: the
    /// operator has to repair or remove it, since regenerating would silently
    /// change the node's identity.
    #[error(
        "identity key file {} is malformed ({reason}); expected \"ed25519:\" and 64 hex characters; \
         not replacing it, repair or remove it by hand",
        path.display()
    )]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The key file holds a bare X25519 key (the format before signed adverts): no signing
    /// key can be derived from it, so it is refused rather than silently replaced.
    #[error(
        "identity key file {} holds an X25519-only key from an older msgtier, which cannot sign \
         adverts; move it away (mv {} {}.old) so a new identity is created, then update \
         pinned_keys on the peers that pin this node",
        path.display(),
        path.display(),
        path.display()
    )]
    Legacy {
        /// The key file.
        path: PathBuf,
    },

    /// The key file or the data directory is open to other users, or a symbolic link.
    #[error("{} {problem}; fix it with: {fix}", path.display())]
    Exposed {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong ("has mode 644, must be 600").
        problem: String,
        /// The command that fixes it.
        fix: String,
    },

    /// A peer's public key is a low-order point, so a Diffie-Hellman result with
    /// it would be predictable (all zeroes) rather than secret.
    #[error("public key is a low-order point")]
    LowOrderPublicKey,
}

/// The node's key pairs (see the module docs).
///
/// The secrets are zeroed when the value is dropped; `Debug` shows only the
/// public key.
pub struct Identity {
    signing: SigningKey,
    secret: StaticSecret,
    public: PublicKey,
}

impl Identity {
    /// Generates a fresh identity from the operating system's random number
    /// generator.
    pub fn generate() -> Result<Identity, IdentityError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice()).map_err(IdentityError::Random)?;
        Ok(Identity::from_private(*bytes))
    }

    /// Builds the identity from a 32-byte Ed25519 seed (any 32 bytes are one).
    pub fn from_private(seed: [u8; 32]) -> Identity {
        let signing = SigningKey::from_bytes(&seed);
        let secret = StaticSecret::from(signing.to_scalar_bytes());
        let public = PublicKey::from(&secret);
        Identity {
            signing,
            secret,
            public,
        }
    }

    /// The Ed25519 seed the identity is built from (what the key file holds). Zeroed when the
    /// returned value is dropped.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The Ed25519 public key that verifies [`Identity::sign`]; [`verify_bound`] ties it to
    /// [`Identity::public`].
    pub fn signing_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// An Ed25519 signature over `message` (deterministic, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        self.signing.sign(message).to_bytes()
    }

    /// Loads the identity from `data_dir/identity.key`, creating the directory
    /// (with parents, mode 0700 on unix) and a new key (mode 0600 on unix) if
    /// there is none yet.
    ///
    /// The file holds the 32 private bytes as 64 hex characters and a `'\n'`;
    /// surrounding whitespace is tolerated when reading. The file is created with
    /// `create_new`, so two processes racing on the same directory never overwrite
    /// each other's key: the loser reads the winner's file. A file that exists but
    /// does not parse is an [`IdentityError::Malformed`] error, never replaced.
    pub fn load_or_create(data_dir: &Path) -> Result<Identity, IdentityError> {
        create_data_dir(data_dir)?;
        let path = data_dir.join(IDENTITY_FILE_NAME);
        match File::open(&path) {
            Ok(file) => return read_key_file(&path, file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(IdentityError::Read { path, source }),
        }

        let identity = Identity::generate()?;
        match create_key_file(&path) {
            Ok(file) => {
                write_key_file(&path, file, &identity)?;
                log::info!(
                    "created new identity {} in {}",
                    hex::encode(identity.public()),
                    path.display()
                );
                Ok(identity)
            }
            // Another process created the file between our open and create:
            // its key wins.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                let file = File::open(&path).map_err(|source| IdentityError::Read {
                    path: path.clone(),
                    source,
                })?;
                read_key_file(&path, file)
            }
            Err(source) => Err(IdentityError::Write { path, source }),
        }
    }

    /// The X25519 public key: the node's identity on the network.
    pub fn public(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The X25519 private key bytes, for snow's `Builder::local_private_key`. Zeroed
    /// when the returned value is dropped.
    pub fn private_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// X25519 agreement with `their_public` (for end-to-end keys). The result
    /// is raw shared secret material: feed it through a KDF before use.
    ///
    /// Fails if `their_public` is a low-order point, whose result would be all
    /// zeroes whatever our key is.
    pub fn diffie_hellman(
        &self,
        their_public: &[u8; 32],
    ) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(IdentityError::LowOrderPublicKey);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &hex::encode(self.public()))
            .finish_non_exhaustive()
    }
}

/// Whether `signature` over `message` was made by the holder of the X25519 identity key
/// `x25519_public`, with the Ed25519 key `signing_public` (which must map to it).
///
/// Strict verification (no small-order keys, canonical signatures only). An Ed25519 key and
/// its negation map to the same X25519 key, and both need the X25519 secret to sign.
pub fn verify_bound(
    signing_public: &[u8; 32],
    x25519_public: &[u8; 32],
    message: &[u8],
    signature: &[u8; SIGNATURE_BYTES],
) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(signing_public) else {
        return false;
    };
    if key.to_montgomery().to_bytes() != *x25519_public {
        return false;
    }
    key.verify_strict(message, &Signature::from_bytes(signature))
        .is_ok()
}

/// Creates `dir` and its parents; new directories get mode 0700 on unix. An
/// existing directory must be a real directory (not a symbolic link) that only its owner can
/// enter.
fn create_data_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DATA_DIR_MODE);
    }
    builder
        .create(dir)
        .map_err(|source| IdentityError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    check_private(dir, DATA_DIR_MODE)
}

/// Refuses a path that is a symbolic link or that group or others can use (unix).
#[cfg(unix)]
fn check_private(path: &Path, mode: u32) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let exposed = |problem: String, fix: String| IdentityError::Exposed {
        path: path.to_path_buf(),
        problem,
        fix,
    };
    if meta.file_type().is_symlink() {
        return Err(exposed(
            "is a symbolic link; the key must live in a real file and directory".into(),
            format!(
                "point data_dir at the real directory (readlink -f {})",
                path.display()
            ),
        ));
    }
    let actual = meta.permissions().mode() & 0o777;
    if actual & 0o077 != 0 {
        return Err(exposed(
            format!("has mode {actual:o}, must be {mode:o} (owner only)"),
            format!("chmod {mode:o} {}", path.display()),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _mode: u32) -> Result<(), IdentityError> {
    Ok(())
}

/// Creates the key file exclusively (fails with `AlreadyExists` if present).
fn create_key_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(IDENTITY_FILE_MODE);
    }
    options.open(path)
}

/// Writes the key into the freshly created `file`. On failure the partial file
/// (which this process created) is removed so the next start does not find a
/// malformed key.
fn write_key_file(path: &Path, mut file: File, identity: &Identity) -> Result<(), IdentityError> {
    let mut content = Zeroizing::new(String::with_capacity(IDENTITY_FILE_BYTES));
    content.push_str(IDENTITY_FILE_PREFIX);
    content.push_str(&Zeroizing::new(hex::encode(*identity.seed())));
    content.push('\n');
    let written = file
        .write_all(content.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        if let Err(err) = fs::remove_file(path) {
            log::warn!(
                "cannot remove partial identity key file {}: {err}",
                path.display()
            );
        }
        return Err(IdentityError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

/// Reads and parses an existing key file.
fn read_key_file(path: &Path, file: File) -> Result<Identity, IdentityError> {
    check_private(path, IDENTITY_FILE_MODE)?;
    let mut content = Zeroizing::new(Vec::with_capacity(IDENTITY_FILE_BYTES));
    file.take(IDENTITY_FILE_READ_LIMIT_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|source| IdentityError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let malformed = |reason| IdentityError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    if content.len() as u64 > IDENTITY_FILE_READ_LIMIT_BYTES {
        return Err(malformed("file too large"));
    }
    let text = content.trim_ascii();
    if text.is_empty() {
        return Err(malformed("file is empty"));
    }
    let Some(hex_digits) = text.strip_prefix(IDENTITY_FILE_PREFIX.as_bytes()) else {
        if text.len() == 64 && text.iter().all(u8::is_ascii_hexdigit) {
            return Err(IdentityError::Legacy {
                path: path.to_path_buf(),
            });
        }
        return Err(malformed("no \"ed25519:\" prefix"));
    };
    if hex_digits.len() != 64 {
        return Err(malformed("wrong length"));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_digits, bytes.as_mut_slice())
        .map_err(|_| malformed("not hexadecimal"))?;
    Ok(Identity::from_private(*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory (mode 0700) inside `dir`.
    fn private_dir(dir: &tempfile::TempDir) -> PathBuf {
        let data = dir.path().join("data");
        create_data_dir(&data).expect("mkdir");
        data
    }

    /// Writes a key file the way an operator would, with mode 0600.
    fn write_private(path: &Path, content: &[u8]) {
        fs::write(path, content).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }

    #[test]
    fn create_then_reload_gives_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = private_dir(&dir);
        let first = Identity::load_or_create(&data).expect("create");
        let second = Identity::load_or_create(&data).expect("reload");
        assert_eq!(first.public(), second.public());
        assert_eq!(first.signing_public(), second.signing_public());
        assert_eq!(*first.private_bytes(), *second.private_bytes());

        let content = fs::read_to_string(data.join(IDENTITY_FILE_NAME)).expect("read");
        assert_eq!(content.len(), IDENTITY_FILE_BYTES);
        assert!(content.ends_with('\n'));
        assert_eq!(
            content.trim_end(),
            format!("ed25519:{}", hex::encode(*first.seed()))
        );
    }

    #[test]
    fn creates_missing_parent_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a").join("b");
        let identity = Identity::load_or_create(&nested).expect("create");
        assert!(nested.join(IDENTITY_FILE_NAME).is_file());
        let again = Identity::load_or_create(&nested).expect("reload");
        assert_eq!(identity.public(), again.public());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_mode_0600_and_dir_mode_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        Identity::load_or_create(&data_dir).expect("create");
        let file_mode = fs::metadata(data_dir.join(IDENTITY_FILE_NAME))
            .expect("stat file")
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        let dir_mode = fs::metadata(&data_dir)
            .expect("stat dir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    /// An exposed key file or data directory, or a symlinked one, stops the start with the
    /// path and the fix; nothing is changed.
    #[cfg(unix)]
    #[test]
    fn exposed_or_symlinked_key_and_dir_are_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        Identity::load_or_create(&data_dir).expect("create");
        let key = data_dir.join(IDENTITY_FILE_NAME);

        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Identity::load_or_create(&data_dir).expect_err("0644 key");
        let text = err.to_string();
        assert!(text.contains(&key.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("chmod 600 {}", key.display())),
            "{text}"
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");

        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = Identity::load_or_create(&data_dir).expect_err("0755 dir");
        assert!(
            err.to_string()
                .contains(&format!("chmod 700 {}", data_dir.display())),
            "{err}"
        );
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700)).expect("chmod");

        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("mkdir");
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).expect("chmod");
        fs::rename(&key, elsewhere.join("real.key")).expect("move");
        std::os::unix::fs::symlink(elsewhere.join("real.key"), &key).expect("symlink");
        let err = Identity::load_or_create(&data_dir).expect_err("symlinked key");
        assert!(err.to_string().contains("symbolic link"), "{err}");

        let linked_dir = dir.path().join("linked");
        std::os::unix::fs::symlink(&elsewhere, &linked_dir).expect("symlink");
        let err = Identity::load_or_create(&linked_dir).expect_err("symlinked dir");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        Identity::load_or_create(&data_dir).expect_err("still refused");
        Identity::load_or_create(&elsewhere).expect("the real directory works");
    }

    #[test]
    fn malformed_file_is_an_error_naming_the_path_and_is_kept() {
        let cases: [&[u8]; 6] = [
            b"",
            b"not hex at all\n",
            b"abcd\n",
            b"ed25519:abcd\n",
            &[b'z'; 64],
            &[b'a'; 2000],
        ];
        for content in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let data = private_dir(&dir);
            let path = data.join(IDENTITY_FILE_NAME);
            write_private(&path, content);
            let err = Identity::load_or_create(&data).expect_err("malformed must fail");
            assert!(
                matches!(&err, IdentityError::Malformed { path: p, .. } if *p == path),
                "{err:?}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
            assert_eq!(
                fs::read(&path).expect("read back"),
                content,
                "file untouched"
            );
        }
    }

    /// A key file from before signed adverts (64 bare hex digits) is kept and refused with
    /// what to do, never read as a seed (that would change the node's key silently).
    #[test]
    fn legacy_x25519_key_file_is_refused_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = private_dir(&dir);
        let path = data.join(IDENTITY_FILE_NAME);
        let content = format!("{}\n", hex::encode([9u8; 32]));
        write_private(&path, content.as_bytes());
        let err = Identity::load_or_create(&data).expect_err("legacy");
        assert!(matches!(err, IdentityError::Legacy { .. }), "{err:?}");
        assert!(err.to_string().contains("mv "), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("read"), content);
    }

    #[test]
    fn tolerates_surrounding_whitespace_and_uppercase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = [0x5au8; 32];
        let content = format!("  ed25519:{}\r\n\n", hex::encode_upper(bytes));
        let data = private_dir(&dir);
        write_private(&data.join(IDENTITY_FILE_NAME), content.as_bytes());
        let identity = Identity::load_or_create(&data).expect("load");
        assert_eq!(*identity.seed(), bytes);
    }

    #[test]
    fn generate_gives_distinct_keys() {
        let a = Identity::generate().expect("generate");
        let b = Identity::generate().expect("generate");
        assert_ne!(a.public(), b.public());
        assert_ne!(*a.private_bytes(), *b.private_bytes());
    }

    #[test]
    fn from_private_round_trips() {
        let identity = Identity::from_private([7u8; 32]);
        assert_eq!(*identity.seed(), [7u8; 32]);
        let again = Identity::from_private(*identity.seed());
        assert_eq!(identity.public(), again.public());
        assert_eq!(identity.signing_public(), again.signing_public());
    }

    /// The signing key is bound to the X25519 identity: a signature verifies only with the
    /// identity it belongs to, another node's signing key cannot be passed off as ours, and
    /// a changed message or signature fails.
    #[test]
    fn signatures_verify_only_under_the_bound_identity() {
        let a = Identity::generate().expect("generate");
        let m = Identity::generate().expect("generate");
        let sig = a.sign(b"advert");
        assert!(verify_bound(
            &a.signing_public(),
            &a.public(),
            b"advert",
            &sig
        ));
        assert!(!verify_bound(
            &a.signing_public(),
            &a.public(),
            b"advert!",
            &sig
        ));
        let mut flipped = sig;
        flipped[5] ^= 1;
        assert!(!verify_bound(
            &a.signing_public(),
            &a.public(),
            b"advert",
            &flipped
        ));
        // M signs with its own key but claims A's identity key: the binding fails.
        let forged = m.sign(b"advert");
        assert!(!verify_bound(
            &m.signing_public(),
            &a.public(),
            b"advert",
            &forged
        ));
        // A's signing key with M's identity key: fails too.
        assert!(!verify_bound(
            &a.signing_public(),
            &m.public(),
            b"advert",
            &sig
        ));
        // Garbage keys never verify.
        assert!(!verify_bound(&[0; 32], &a.public(), b"advert", &sig));
    }

    #[test]
    fn debug_does_not_print_private_key() {
        let identity = Identity::from_private([0xabu8; 32]);
        let debug = format!("{identity:?}");
        assert!(debug.contains(&hex::encode(identity.public())));
        assert!(!debug.contains(&hex::encode(*identity.private_bytes())));
        assert!(!debug.contains(&hex::encode(*identity.seed())));
        assert!(!debug.contains("171, 171"));
    }

    #[test]
    fn diffie_hellman_agrees_and_rejects_low_order_points() {
        let a = Identity::generate().expect("generate");
        let b = Identity::generate().expect("generate");
        let ab = a.diffie_hellman(&b.public()).expect("dh");
        let ba = b.diffie_hellman(&a.public()).expect("dh");
        assert_eq!(*ab, *ba);

        let mut one = [0u8; 32];
        one[0] = 1;
        for low_order in [[0u8; 32], one] {
            assert!(matches!(
                a.diffie_hellman(&low_order),
                Err(IdentityError::LowOrderPublicKey)
            ));
        }
    }
}
