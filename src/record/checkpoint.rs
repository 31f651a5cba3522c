//! Signed checkpoints: a tree head (origin, size, root hash) in the C2SP `tlog-checkpoint` format,
//! signed as a C2SP `signed-note` with Ed25519, and the key encodings that go with it.
//!
//! A checkpoint note looks like this (the signature line starts with an em dash, U+2014):
//!
//! ```text
//! example.com/ledger
//! 4
//! <base64 of the 32-byte RFC 6962 root>
//!
//! — example.com/ledger <base64 of 4-byte key ID || 64-byte Ed25519 signature>
//! ```
//!
//! The signature covers the body, final newline included. The key ID is
//! `SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]`, big-endian; its hex is the key's
//! fingerprint. Keys are written as Go's `golang.org/x/mod/sumdb/note` writes them, so its tools
//! (and any C2SP implementation) read them:
//!
//! - public (the C2SP "vkey"): `<name>+<8 hex digits of key ID>+<base64(0x01 || public key)>`
//! - private: `PRIVATE+KEY+<name>+<8 hex digits of key ID>+<base64(0x01 || 32-byte seed)>`
//!
//! Written here rather than taken from the `signed_note` crate: that crate pins `ed25519-dalek` 2
//! and `rand_core` 0.6, and the format is a page of spec (checked below against the spec's
//! examples and the Go implementation's published key, note and signature).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer};
use sha2::{Digest, Sha256};

use super::merkle::{CompactTree, Hash};

/// The signed-note signature type of Ed25519.
const ED25519: u8 = 0x01;
/// What starts every signature line: an em dash and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// More signatures than this make a note malformed (the spec asks verifiers for at least 16).
const MAX_SIGNATURES: usize = 100;
/// Larger notes are refused before any parsing.
const MAX_NOTE_BYTES: usize = 1 << 20;

/// A tree head: which log, how many leaves, and the RFC 6962 root over them. Construction checks
/// the origin, so every `Checkpoint` can be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
}

impl Checkpoint {
    /// A checkpoint of the log named `origin`. The origin must be non-empty and free of control
    /// characters; by convention it is the signing key's name.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Result<Self, CheckpointError> {
        let origin = origin.into();
        if origin.is_empty() || origin.chars().any(char::is_control) {
            return Err(malformed("the origin must be non-empty and free of control characters"));
        }
        Ok(Checkpoint { origin, size, root })
    }

    /// The checkpoint of `tree` as it stands.
    pub fn of_tree(origin: impl Into<String>, tree: &CompactTree) -> Result<Self, CheckpointError> {
        Self::new(origin, tree.size(), tree.root())
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The note text: origin, size and base64 root, one per line.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, BASE64.encode(self.root))
    }

    /// Parses a note text. Extension lines (after the root) are allowed by the spec and opaque:
    /// they are checked to be non-empty and otherwise ignored; mcp-ledger writes none.
    fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let lines: Vec<&str> = text
            .strip_suffix('\n')
            .ok_or_else(|| malformed("the checkpoint text does not end in a newline"))?
            .split('\n')
            .collect();
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(malformed("a checkpoint has an origin, a size and a root hash line"));
        };
        if extensions.iter().any(|line| line.is_empty()) {
            return Err(malformed("a checkpoint extension line is empty"));
        }
        let canonical_decimal = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (*size == "0" || !size.starts_with('0'));
        let size = canonical_decimal
            .then(|| size.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| malformed(format!("tree size {size:?} is not a decimal number")))?;
        let root: Hash =
            BASE64.decode(root).ok().and_then(|bytes| bytes.try_into().ok()).ok_or_else(|| {
                malformed(format!("root hash {root:?} is not 32 bytes of base64"))
            })?;
        Self::new(*origin, size, root)
    }
}

/// Why a checkpoint note was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The note or its checkpoint text does not follow the format.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// No signature in the note is by a trusted key (`signers` lists the keys that did sign, as
    /// `name+keyid`).
    #[error("no signature by a trusted key (signed by: {})", display_list(signers))]
    UnknownKey { signers: Vec<String> },
    /// A trusted key's signature does not verify: the note was altered or forged.
    #[error("the signature by {key} does not verify")]
    BadSignature { key: String },
}

fn display_list(items: &[String]) -> String {
    if items.is_empty() { "nobody".to_owned() } else { items.join(", ") }
}

fn malformed(reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Malformed(reason.into())
}

/// Why a key could not be read or made. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "invalid key name {0:?}: it must be non-empty, without spaces, control characters or '+'"
    )]
    InvalidName(String),
    #[error("malformed {kind}: {reason}")]
    Malformed { kind: &'static str, reason: &'static str },
    #[error("{kind} for {name} says key ID {stated} but the key's ID is {computed}")]
    IdMismatch { kind: &'static str, name: String, stated: String, computed: String },
}

const PUBLIC: &str = "public key";
const PRIVATE: &str = "private key";
const PRIVATE_PREFIX: &str = "PRIVATE+KEY+";

fn check_name(name: &str) -> Result<(), KeyError> {
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '+';
    if name.is_empty() || name.chars().any(bad) {
        return Err(KeyError::InvalidName(name.to_owned()));
    }
    Ok(())
}

/// `SHA-256(name || 0x0A || 0x01 || public key)[:4]` as a big-endian integer.
fn key_id(name: &str, public: &ed25519_dalek::VerifyingKey) -> u32 {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ED25519])
        .chain_update(public.as_bytes())
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Splits `<name>+<hex id>+<base64(0x01 || 32 bytes)>` and checks everything but the ID.
fn parse_key_parts(kind: &'static str, text: &str) -> Result<(String, u32, [u8; 32]), KeyError> {
    let bad = |reason| KeyError::Malformed { kind, reason };
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected <name>+<key ID>+<key>"));
    };
    check_name(name)?;
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the key ID is not 8 hex digits"));
    }
    let id = u32::from_str_radix(id, 16).map_err(|_| bad("the key ID is not 8 hex digits"))?;
    let key = BASE64.decode(key).map_err(|_| bad("the key is not base64"))?;
    let [ED25519, material @ ..] = key.as_slice() else {
        return Err(bad("the key is not an Ed25519 (type 0x01) key"));
    };
    let material: [u8; 32] = material.try_into().map_err(|_| bad("an Ed25519 key is 32 bytes"))?;
    Ok((name.to_owned(), id, material))
}

fn check_id(kind: &'static str, name: &str, stated: u32, computed: u32) -> Result<(), KeyError> {
    if stated != computed {
        return Err(KeyError::IdMismatch {
            kind,
            name: name.to_owned(),
            stated: format!("{stated:08x}"),
            computed: format!("{computed:08x}"),
        });
    }
    Ok(())
}

/// A log's Ed25519 signing key and its name. `Debug` shows the name and fingerprint only.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    id: u32,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// The key named `name` whose RFC 8032 secret is `seed` (32 random bytes: the caller draws
    /// them, so this module stays free of I/O).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, KeyError> {
        check_name(name)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let id = key_id(name, &key.verifying_key());
        Ok(SigningKey { name: name.to_owned(), id, key })
    }

    /// Reads `PRIVATE+KEY+<name>+<key ID>+<base64(0x01 || seed)>` (surrounding whitespace, such as
    /// a file's final newline, is ignored).
    pub fn from_private_key(text: &str) -> Result<Self, KeyError> {
        let rest = text.trim().strip_prefix(PRIVATE_PREFIX).ok_or(KeyError::Malformed {
            kind: PRIVATE,
            reason: "it does not start with PRIVATE+KEY+",
        })?;
        let (name, stated, seed) = parse_key_parts(PRIVATE, rest)?;
        let key = Self::from_seed(&name, seed)?;
        check_id(PRIVATE, &name, stated, key.id)?;
        Ok(key)
    }

    /// The private key file's text. **Secret**: never log or print it.
    pub fn to_private_key(&self) -> String {
        let mut material = vec![ED25519];
        material.extend_from_slice(self.key.as_bytes());
        format!("{PRIVATE_PREFIX}{}+{:08x}+{}", self.name, self.id, BASE64.encode(&material))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID: the first four bytes of the key hash, big-endian.
    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// The key ID as 8 lower-case hex digits.
    pub fn fingerprint(&self) -> String {
        format!("{:08x}", self.id)
    }

    /// The public half, to hand to verifiers.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey { name: self.name.clone(), id: self.id, key: self.key.verifying_key() }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A trusted log's Ed25519 public key and name. `Display` writes the C2SP vkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl VerifyingKey {
    /// Reads a C2SP vkey, `<name>+<key ID>+<base64(0x01 || public key)>` (surrounding whitespace is
    /// ignored). The key ID must be the one the spec recommends, and small-order keys are refused.
    pub fn from_vkey(text: &str) -> Result<Self, KeyError> {
        let (name, stated, material) = parse_key_parts(PUBLIC, text.trim())?;
        let bad = |reason| KeyError::Malformed { kind: PUBLIC, reason };
        let key = ed25519_dalek::VerifyingKey::from_bytes(&material)
            .map_err(|_| bad("not a point on Ed25519"))?;
        if key.is_weak() {
            return Err(bad("a small-order Ed25519 key verifies forged signatures"));
        }
        let id = key_id(&name, &key);
        check_id(PUBLIC, &name, stated, id)?;
        Ok(VerifyingKey { name, id, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID: the first four bytes of the key hash, big-endian.
    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// The key ID as 8 lower-case hex digits.
    pub fn fingerprint(&self) -> String {
        format!("{:08x}", self.id)
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut material = vec![ED25519];
        material.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, BASE64.encode(&material))
    }
}

impl FromStr for VerifyingKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        Self::from_vkey(text)
    }
}

/// The signed checkpoint note.
pub fn sign(checkpoint: &Checkpoint, key: &SigningKey) -> String {
    sign_note(&checkpoint.body(), key).expect("a checkpoint body is a valid note text")
}

/// Checks the note's signatures against `keys` and parses its checkpoint. Signatures by other keys
/// are ignored; at least one must be by a key in `keys`, and every one that is must verify.
pub fn verify(note: &str, keys: &[VerifyingKey]) -> Result<Checkpoint, CheckpointError> {
    Checkpoint::parse_body(open_note(note, keys)?)
}

/// Signs any note text (non-empty, ending in a newline, no control characters but newlines):
/// the text, a blank line, and the key's signature line.
pub fn sign_note(text: &str, key: &SigningKey) -> Result<String, CheckpointError> {
    check_text(text)?;
    if text.is_empty() || !text.ends_with('\n') {
        return Err(malformed("a note text must be non-empty and end in a newline"));
    }
    let signature = key.key.sign(text.as_bytes());
    let mut blob = key.id.to_be_bytes().to_vec();
    blob.extend_from_slice(&signature.to_bytes());
    Ok(format!("{text}\n{SIGNATURE_PREFIX}{} {}\n", key.name, BASE64.encode(&blob)))
}

/// Verifies a signed note against `keys` and returns its text (final newline included).
pub fn open_note<'a>(note: &'a str, keys: &[VerifyingKey]) -> Result<&'a str, CheckpointError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(malformed("the note is larger than 1 MiB"));
    }
    check_text(note)?;
    // The text ends at the last blank line; the text itself may contain blank lines.
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| malformed("no blank line separates the text from the signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    let signatures = signatures
        .strip_suffix('\n')
        .ok_or_else(|| malformed("the note does not end in a signature line"))?;

    let mut signers = Vec::new();
    let mut verified = false;
    for (n, line) in signatures.split('\n').enumerate() {
        if n == MAX_SIGNATURES {
            return Err(malformed(format!("the note has more than {MAX_SIGNATURES} signatures")));
        }
        let (name, id, signature) = parse_signature_line(line)?;
        let Some(key) = keys.iter().find(|key| key.name == name && key.id == id) else {
            signers.push(format!("{name}+{id:08x}"));
            continue;
        };
        let bad =
            || CheckpointError::BadSignature { key: format!("{}+{}", key.name, key.fingerprint()) };
        let signature: [u8; 64] = signature.try_into().map_err(|_| bad())?;
        key.key
            .verify_strict(text.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| bad())?;
        verified = true;
    }
    if verified { Ok(text) } else { Err(CheckpointError::UnknownKey { signers }) }
}

/// `— <name> <base64(key ID || signature)>` into its name, key ID and signature bytes.
fn parse_signature_line(line: &str) -> Result<(&str, u32, Vec<u8>), CheckpointError> {
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or_else(|| malformed("a signature line does not start with an em dash and a space"))?;
    let (name, blob) = rest
        .split_once(' ')
        .ok_or_else(|| malformed("a signature line has no space between key name and signature"))?;
    check_name(name).map_err(|_| malformed(format!("invalid key name {name:?} in a signature")))?;
    let blob = BASE64
        .decode(blob)
        .map_err(|_| malformed(format!("the signature by {name} is not base64")))?;
    let [a, b, c, d, signature @ ..] = blob.as_slice() else {
        return Err(malformed(format!("the signature by {name} is too short")));
    };
    if signature.is_empty() {
        return Err(malformed(format!("the signature by {name} is too short")));
    }
    Ok((name, u32::from_be_bytes([*a, *b, *c, *d]), signature.to_vec()))
}

fn check_text(text: &str) -> Result<(), CheckpointError> {
    if text.chars().any(|c| c.is_ascii_control() && c != '\n') {
        return Err(malformed("the note contains a control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::merkle::{EMPTY_ROOT, leaf_hash};

    // The Go reference implementation's example (golang.org/x/mod/sumdb/note): a key pair, a text,
    // and the deterministic Ed25519 signature of that text by that key.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const GO_SIGNATURE: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    // The examples in c2sp.org/tlog-checkpoint and c2sp.org/signed-note (their keys are not
    // published, so they can be parsed but not verified).
    const SPEC_CHECKPOINT: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";
    const SPEC_NOTE: &str = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u{e8} subito sera.\n\n\u{2014} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";

    fn key(name: &str, byte: u8) -> SigningKey {
        SigningKey::from_seed(name, [byte; 32]).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        let tree = CompactTree::from_leaves(&[leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]);
        Checkpoint::of_tree("example.com/ledger", &tree).unwrap()
    }

    #[test]
    fn go_reference_keys_and_signature() {
        let signer = SigningKey::from_private_key(GO_SKEY).unwrap();
        assert_eq!(signer.name(), "PeterNeumann");
        assert_eq!(signer.fingerprint(), "c74f20a3");
        assert_eq!(signer.key_id(), 0xc74f20a3);
        assert_eq!(signer.to_private_key(), GO_SKEY);
        assert_eq!(signer.verifying_key().to_string(), GO_VKEY);

        let verifier = VerifyingKey::from_vkey(GO_VKEY).unwrap();
        assert_eq!(verifier, signer.verifying_key());
        assert_eq!(verifier.fingerprint(), "c74f20a3");

        let note = sign_note(GO_TEXT, &signer).unwrap();
        assert_eq!(note, format!("{GO_TEXT}\n{GO_SIGNATURE}"));
        assert_eq!(open_note(&note, &[verifier]).unwrap(), GO_TEXT);
    }

    #[test]
    fn the_spec_examples_parse() {
        let stranger = key("example.com/behind-the-sofa", 1).verifying_key();
        // Split at the last blank line, UTF-8 in the text, one signer we do not know.
        assert_eq!(
            open_note(SPEC_NOTE, std::slice::from_ref(&stranger)),
            Err(CheckpointError::UnknownKey {
                signers: vec!["quasimodo.example/salvatore+367ba04b".into()]
            })
        );
        // Same name as the checkpoint's signer but another key ID: ignored, so nothing verifies.
        assert_eq!(
            verify(SPEC_CHECKPOINT, &[stranger]),
            Err(CheckpointError::UnknownKey {
                signers: vec!["example.com/behind-the-sofa+033de0ae".into()]
            })
        );
        let body = SPEC_CHECKPOINT.split("\n\n").next().unwrap();
        let checkpoint = Checkpoint::parse_body(&format!("{body}\n")).unwrap();
        assert_eq!(checkpoint.origin(), "example.com/behind-the-sofa");
        assert_eq!(checkpoint.size(), 20852163);
        assert_eq!(
            BASE64.encode(checkpoint.root()),
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
        );
        assert_eq!(checkpoint.body(), format!("{body}\n"));
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let signer = key("example.com/ledger", 7);
        let checkpoint = checkpoint();
        let note = sign(&checkpoint, &signer);
        let root = BASE64.encode(checkpoint.root());
        let signature_line = note.lines().last().unwrap();
        assert_eq!(note, format!("example.com/ledger\n3\n{root}\n\n{signature_line}\n"));
        assert!(signature_line.starts_with("\u{2014} example.com/ledger "));
        let blob = BASE64.decode(signature_line.rsplit(' ').next().unwrap()).unwrap();
        assert_eq!(blob.len(), 4 + 64);
        assert_eq!(blob[..4], signer.key_id().to_be_bytes());

        assert_eq!(verify(&note, &[signer.verifying_key()]), Ok(checkpoint));

        let empty = Checkpoint::new("example.com/ledger", 0, EMPTY_ROOT).unwrap();
        let note = sign(&empty, &signer);
        assert!(note.starts_with(
            "example.com/ledger\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n"
        ));
        assert_eq!(verify(&note, &[signer.verifying_key()]), Ok(empty));
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let signer = key("example.com/ledger", 9);
        let again =
            SigningKey::from_private_key(&format!("{}\n", signer.to_private_key())).unwrap();
        assert_eq!(again.verifying_key(), signer.verifying_key());
        let vkey = signer.verifying_key().to_string();
        assert!(vkey.starts_with(&format!("example.com/ledger+{}+", signer.fingerprint())));
        assert_eq!(format!("{vkey}\n").parse::<VerifyingKey>().unwrap(), signer.verifying_key());
        // Same seed, other name: another key ID.
        assert_ne!(key("other", 9).key_id(), signer.key_id());
    }

    #[test]
    fn the_signing_key_never_shows_its_secret() {
        let signer = SigningKey::from_private_key(GO_SKEY).unwrap();
        let debug = format!("{signer:?}");
        assert!(debug.contains("PeterNeumann") && debug.contains("c74f20a3"), "{debug}");
        assert!(!debug.contains("AYEKFALV"), "{debug}");
        let seed_b64 = GO_SKEY.rsplit('+').next().unwrap();
        // A private key with a wrong ID or a damaged key: the error names neither the seed nor the key.
        for broken in [
            GO_SKEY.replace("c74f20a3", "c74f20a4"),
            GO_SKEY.replace("+AYEK", "+AiEK"),
            GO_SKEY.replace("+AYEK", "+AYE"),
            GO_SKEY.replacen("PRIVATE+KEY+", "PRIVATE+KEY", 1),
        ] {
            let error = SigningKey::from_private_key(&broken).unwrap_err().to_string();
            assert!(!error.contains(&seed_b64[1..12]), "{error}");
        }
    }

    #[test]
    fn every_mangled_vkey_is_refused() {
        // As the Go implementation tests it: every proper substring, and every single byte bumped.
        let bytes = GO_VKEY.as_bytes();
        for i in 0..=bytes.len() {
            for j in i + 1..=bytes.len() {
                if (i, j) != (0, bytes.len())
                    && let Ok(part) = std::str::from_utf8(&bytes[i..j])
                {
                    assert!(VerifyingKey::from_vkey(part).is_err(), "{part}");
                }
            }
        }
        let mut bumped = bytes.to_vec();
        for i in 0..bumped.len() {
            bumped[i] = bumped[i].wrapping_add(1);
            if let Ok(text) = std::str::from_utf8(&bumped) {
                assert!(VerifyingKey::from_vkey(text).is_err(), "{text}");
            }
            bumped[i] = bumped[i].wrapping_sub(1);
        }
    }

    #[test]
    fn key_errors_are_specific() {
        assert_eq!(
            VerifyingKey::from_vkey(&GO_VKEY.replace("c74f20a3", "c74f20a4")),
            Err(KeyError::IdMismatch {
                kind: "public key",
                name: "PeterNeumann".into(),
                stated: "c74f20a4".into(),
                computed: "c74f20a3".into(),
            })
        );
        let other_type = GO_VKEY.replace("+ARpc", "+AhpC");
        assert!(matches!(
            VerifyingKey::from_vkey(&other_type),
            Err(KeyError::Malformed { reason: "the key is not an Ed25519 (type 0x01) key", .. })
        ));
        // The identity point has small order: it would accept forged signatures.
        let mut identity = vec![ED25519, 1];
        identity.extend_from_slice(&[0; 31]);
        let weak_key =
            ed25519_dalek::VerifyingKey::from_bytes(&identity[1..].try_into().unwrap()).unwrap();
        let weak = format!("weak+{:08x}+{}", key_id("weak", &weak_key), BASE64.encode(&identity));
        assert!(matches!(
            VerifyingKey::from_vkey(&weak),
            Err(KeyError::Malformed { reason, .. }) if reason.contains("small-order")
        ));
        for name in ["", "has space", "has+plus", "tab\there", "new\nline"] {
            assert_eq!(
                SigningKey::from_seed(name, [1; 32]).unwrap_err(),
                KeyError::InvalidName(name.into())
            );
        }
        assert!(SigningKey::from_seed("example.com/log-42", [1; 32]).is_ok());
    }

    #[test]
    fn checkpoint_origins_are_checked() {
        for origin in ["", "two\nlines", "nul\0"] {
            assert!(matches!(
                Checkpoint::new(origin, 1, EMPTY_ROOT),
                Err(CheckpointError::Malformed(_))
            ));
        }
        assert!(Checkpoint::new("any origin, even with spaces", 1, EMPTY_ROOT).is_ok());
    }

    #[test]
    fn foreign_keys_are_unknown() {
        let signer = key("example.com/ledger", 7);
        let note = sign(&checkpoint(), &signer);
        let other_name = key("example.com/other", 7).verifying_key();
        let same_name_other_key = key("example.com/ledger", 8).verifying_key();
        let signed_by = vec![format!("example.com/ledger+{}", signer.fingerprint())];
        for keys in [vec![], vec![other_name], vec![same_name_other_key]] {
            assert_eq!(
                verify(&note, &keys),
                Err(CheckpointError::UnknownKey { signers: signed_by.clone() })
            );
        }
    }

    #[test]
    fn altered_notes_have_bad_signatures() {
        let signer = key("example.com/ledger", 7);
        let trusted = [signer.verifying_key()];
        let note = sign(&checkpoint(), &signer);
        let bad = Err(CheckpointError::BadSignature {
            key: format!("example.com/ledger+{}", signer.fingerprint()),
        });

        assert_eq!(verify(&note.replacen("\n3\n", "\n4\n", 1), &trusted), bad);
        let forged_root =
            sign(&Checkpoint::new("example.com/ledger", 3, EMPTY_ROOT).unwrap(), &signer);
        let forged_body = forged_root.split("\n\n").next().unwrap();
        let original_signature = note.split("\n\n").nth(1).unwrap();
        assert_eq!(verify(&format!("{forged_body}\n\n{original_signature}"), &trusted), bad);

        // A flipped bit anywhere in the signature itself.
        let (head, line) = note.rsplit_once(' ').unwrap();
        let blob = BASE64.decode(line.trim_end()).unwrap();
        for at in 4..blob.len() {
            let mut flipped = blob.clone();
            flipped[at] ^= 0x01;
            let altered = format!("{head} {}\n", BASE64.encode(&flipped));
            assert_eq!(verify(&altered, &trusted), bad, "byte {at}");
        }
        // The right key ID with a signature of the wrong length.
        let short = format!("{head} {}\n", BASE64.encode(&blob[..blob.len() - 1]));
        assert_eq!(verify(&short, &trusted), bad);

        // A valid signature does not excuse a bad one from another trusted key.
        let second = key("example.com/witness", 3);
        let cosigned =
            format!("{note}{}", sign(&checkpoint(), &second).split("\n\n").nth(1).unwrap());
        let both = [signer.verifying_key(), second.verifying_key()];
        assert_eq!(verify(&cosigned, &both), Ok(checkpoint()));
        let (head2, last) = cosigned.trim_end().rsplit_once(' ').unwrap();
        let mut blob2 = BASE64.decode(last).unwrap();
        blob2[10] ^= 0x80;
        let tampered = format!("{head2} {}\n", BASE64.encode(&blob2));
        assert_eq!(
            verify(&tampered, &both),
            Err(CheckpointError::BadSignature {
                key: format!("example.com/witness+{}", second.fingerprint())
            })
        );
        // Unknown signers alongside a good one are ignored.
        assert_eq!(verify(&cosigned, &trusted), Ok(checkpoint()));
    }

    #[test]
    fn malformed_notes_are_named() {
        let signer = key("example.com/ledger", 7);
        let trusted = [signer.verifying_key()];
        let note = sign(&checkpoint(), &signer);
        let (body, signature) = note.split_once("\n\n").unwrap();
        let (_, blob) = signature.trim_end().rsplit_once(' ').unwrap();
        let resign = |text: &str| sign_note(text, &signer).unwrap();
        let root = BASE64.encode(checkpoint().root());

        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no blank line"),
            (body.to_owned(), "no blank line"),
            (format!("{body}\n\n"), "does not end in a signature line"),
            (format!("{body}\n\n{}", signature.trim_end()), "does not end in a signature line"),
            (note.replace('\u{2014}', "--"), "em dash"),
            (note.replacen("\u{2014} ", "\u{2014}", 1), "em dash"),
            (format!("{body}\n\n\u{2014} example.com/ledger\n"), "no space"),
            (format!("{body}\n\n\u{2014}  {blob}\n"), "invalid key name"),
            (format!("{body}\n\n\u{2014} a+b {blob}\n"), "invalid key name"),
            (format!("{body}\n\n\u{2014} example.com/ledger !!!!\n"), "not base64"),
            (format!("{body}\n\n\u{2014} example.com/ledger AAAAAA==\n"), "too short"),
            (format!("{body}\n\n\u{2014} example.com/ledger AAAA\n"), "too short"),
            (note.replace("ledger\n3", "ledger\t\n3"), "control character"),
            (resign("example.com/ledger\n3\n"), "an origin, a size and a root"),
            (resign(&format!("\n3\n{root}\n")), "origin must be non-empty"),
            (resign(&format!("example.com/ledger\n03\n{root}\n")), "not a decimal"),
            (resign(&format!("example.com/ledger\n-3\n{root}\n")), "not a decimal"),
            (resign(&format!("example.com/ledger\n+3\n{root}\n")), "not a decimal"),
            (resign(&format!("example.com/ledger\n\n{root}\n")), "not a decimal"),
            (
                resign(&format!("example.com/ledger\n18446744073709551616\n{root}\n")),
                "not a decimal",
            ),
            (resign("example.com/ledger\n3\nAAAA\n"), "not 32 bytes"),
            (resign("example.com/ledger\n3\n%%%%\n"), "not 32 bytes"),
            (resign(&format!("example.com/ledger\n3\n{root}\next\n\n")), "extension line is empty"),
        ];
        for (note, want) in cases {
            match verify(&note, &trusted) {
                Err(CheckpointError::Malformed(reason)) => {
                    assert!(reason.contains(want), "{note:?}: {reason}")
                }
                other => panic!("{note:?}: expected malformed ({want}), got {other:?}"),
            }
        }

        // A stranger's signature line (here with the trusted key's ID) is not malformed.
        assert_eq!(verify(&format!("{note}\u{2014} x {blob}\n"), &trusted), Ok(checkpoint()));
        // Extension lines are allowed (and ignored).
        let extended = resign(&format!("example.com/ledger\n3\n{root}\nextension\n"));
        assert_eq!(verify(&extended, &trusted), Ok(checkpoint()));
        // A 101st signature is too many; 100 are fine.
        let stranger = key("example.com/stranger", 5);
        let stranger_line = sign(&checkpoint(), &stranger);
        let stranger_line = stranger_line.split("\n\n").nth(1).unwrap();
        let with = |n: usize| format!("{note}{}", stranger_line.repeat(n));
        assert_eq!(verify(&with(99), &trusted), Ok(checkpoint()));
        assert!(matches!(
            verify(&with(100), &trusted),
            Err(CheckpointError::Malformed(reason)) if reason.contains("more than 100")
        ));
        assert!(matches!(
            verify(&"x".repeat(MAX_NOTE_BYTES + 1), &trusted),
            Err(CheckpointError::Malformed(reason)) if reason.contains("1 MiB")
        ));
        // Texts that cannot be signed.
        for text in ["", "no final newline", "tab\there\n"] {
            assert!(matches!(sign_note(text, &signer), Err(CheckpointError::Malformed(_))));
        }
    }

    #[test]
    fn error_messages_name_what_is_wrong() {
        assert_eq!(
            CheckpointError::UnknownKey { signers: vec![] }.to_string(),
            "no signature by a trusted key (signed by: nobody)"
        );
        assert_eq!(
            CheckpointError::UnknownKey { signers: vec!["a+00000001".into(), "b+00000002".into()] }
                .to_string(),
            "no signature by a trusted key (signed by: a+00000001, b+00000002)"
        );
        assert_eq!(
            CheckpointError::BadSignature { key: "a+00000001".into() }.to_string(),
            "the signature by a+00000001 does not verify"
        );
    }
}
