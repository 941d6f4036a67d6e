//! The node's long-term identity: one X25519 key pair.
//!
//! The public half is the node's name on the network (Noise proves it to every
//! peer during the link handshake, see [`crate::proto::handshake`]); the private
//! half is the static key snow's builder is given, and later the key for
//! end-to-end agreements ([`Identity::diffie_hellman`]).
//!
//! Start-up code calls [`Identity::load_or_create`] once with the node's data
//! directory: the key is generated on the first start and reused afterwards, so a
//! node keeps its name across restarts. The key file is never silently replaced:
//! if it exists but cannot be parsed, that is an error naming the file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Name of the key file inside the data directory.
pub const IDENTITY_FILE_NAME: &str = "identity.key";

/// Length of the key file's content: 32 private bytes as hex (2 chars per byte)
/// plus the trailing `'\n'`.
const IDENTITY_FILE_BYTES: usize = 32 * 2 + 1;

/// Upper bound on what is read from an existing key file before declaring it
/// malformed: the real content is 65 bytes, 1 KiB tolerates hand edits
/// (whitespace, CRLF) without reading an arbitrary file into memory.
const IDENTITY_FILE_READ_LIMIT_BYTES: u64 = 1024;

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
        "identity key file {} is malformed ({reason}); expected 64 hex characters; \
         not replacing it, repair or remove it by hand",
        path.display()
    )]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A peer's public key is a low-order point, so a Diffie-Hellman result with
    /// it would be predictable (all zeroes) rather than secret.
    #[error("public key is a low-order point")]
    LowOrderPublicKey,
}

/// The node's X25519 key pair.
///
/// The secret is zeroed when the value is dropped; `Debug` shows only the
/// public key.
pub struct Identity {
    secret: StaticSecret,
    public: PublicKey,
}

impl Identity {
    /// Generates a fresh key pair from the operating system's random number
    /// generator.
    pub fn generate() -> Result<Identity, IdentityError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice()).map_err(IdentityError::Random)?;
        Ok(Identity::from_private(*bytes))
    }

    /// Builds the key pair from 32 private bytes (X25519 clamping is applied
    /// when the key is used, so any 32 bytes are a valid private key).
    pub fn from_private(bytes: [u8; 32]) -> Identity {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Identity { secret, public }
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

    /// The public key: the node's identity on the network.
    pub fn public(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The private key bytes, for snow's `Builder::local_private_key`. Zeroed
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

/// Creates `dir` and its parents; new directories get mode 0700 on unix. An
/// existing directory's mode is left alone.
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
        })
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
    content.push_str(&Zeroizing::new(hex::encode(identity.secret.as_bytes())));
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
    warn_if_exposed(path, &file);
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
    let hex_digits = content.trim_ascii();
    if hex_digits.is_empty() {
        return Err(malformed("file is empty"));
    }
    if hex_digits.len() != 64 {
        return Err(malformed("wrong length"));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_digits, bytes.as_mut_slice())
        .map_err(|_| malformed("not hexadecimal"))?;
    Ok(Identity::from_private(*bytes))
}

/// Logs a warning if the key file is readable by group or others.
#[cfg(unix)]
fn warn_if_exposed(path: &Path, file: &File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata() {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            log::warn!(
                "identity key file {} has mode {:o}; it should be {:o}",
                path.display(),
                mode & 0o777,
                IDENTITY_FILE_MODE
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path, _file: &File) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_reload_gives_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Identity::load_or_create(dir.path()).expect("create");
        let second = Identity::load_or_create(dir.path()).expect("reload");
        assert_eq!(first.public(), second.public());
        assert_eq!(*first.private_bytes(), *second.private_bytes());

        let content = fs::read_to_string(dir.path().join(IDENTITY_FILE_NAME)).expect("read");
        assert_eq!(content.len(), IDENTITY_FILE_BYTES);
        assert!(content.ends_with('\n'));
        assert_eq!(content.trim_end(), hex::encode(*first.private_bytes()));
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

    #[test]
    fn malformed_file_is_an_error_naming_the_path_and_is_kept() {
        let cases: [&[u8]; 5] = [
            b"",
            b"not hex at all\n",
            b"abcd\n",
            &[b'z'; 64],
            &[b'a'; 2000],
        ];
        for content in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(IDENTITY_FILE_NAME);
            fs::write(&path, content).expect("write");
            let err = Identity::load_or_create(dir.path()).expect_err("malformed must fail");
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

    #[test]
    fn tolerates_surrounding_whitespace_and_uppercase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = [0x5au8; 32];
        let content = format!("  {}\r\n\n", hex::encode_upper(bytes));
        fs::write(dir.path().join(IDENTITY_FILE_NAME), content).expect("write");
        let identity = Identity::load_or_create(dir.path()).expect("load");
        assert_eq!(*identity.private_bytes(), bytes);
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
        assert_eq!(*identity.private_bytes(), [7u8; 32]);
        let again = Identity::from_private(*identity.private_bytes());
        assert_eq!(identity.public(), again.public());
    }

    #[test]
    fn debug_does_not_print_private_key() {
        let identity = Identity::from_private([0xabu8; 32]);
        let debug = format!("{identity:?}");
        assert!(debug.contains(&hex::encode(identity.public())));
        assert!(!debug.contains(&hex::encode(*identity.private_bytes())));
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
