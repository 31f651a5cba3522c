//! The Merkle tree over a chain's events: RFC 6962 §2.1 hashing (restated in RFC 9162 §2.1), the
//! O(log n) incremental state a log keeps to sign checkpoints, and inclusion and consistency
//! proofs with their verifiers.
//!
//! **Leaves.** Leaf `i` of a chain's tree is the event with `seq = i + 1`, and its leaf *bytes* are
//! that event's 32-byte `hash` (the hex column decoded), so the leaf hash is
//! `SHA-256(0x00 || hash)` ([`event_leaf_hash`]). Using the event hash rather than the event's
//! canonical JSON binds the tree to the hash chain: a checkpoint's root commits to every event's
//! hash, each of which commits to its fields and its predecessor, and a proof needs nothing but the
//! `hash` column. Interior nodes are `SHA-256(0x01 || left || right)`; the empty tree's root is
//! `SHA-256("")`.
//!
//! **Why not a crate.** `ct-merkle` keeps every node of the tree in memory (no compact range to
//! persist) and is built on the `digest` 0.11 / `sha2` 0.11 stack while the rest of `record/` uses
//! `sha2` 0.10; `tlog_tiles` (a port of Go's `sumdb/tlog`) reads proofs from Go's stored-hash
//! layout, which the store does not keep, and pulls in older `thiserror`/`base64`. What is needed
//! here is about a hundred lines of RFC-defined recursion, tested exhaustively below against the
//! definition, the Go reference implementation's published vectors, and tampering.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf hash, an interior node or a root.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// The hash of a leaf whose bytes are `data`: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new().chain_update([0x00]).chain_update(data).finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new().chain_update([0x01]).chain_update(left).chain_update(right).finalize().into()
}

/// The leaf hash of an event, from its `hash` column (64 lower-case hex digits): the leaf bytes are
/// the 32 bytes that hex encodes.
pub fn event_leaf_hash(event_hash_hex: &str) -> Result<Hash, ProofError> {
    let mut bytes = [0u8; 32];
    let lower = event_hash_hex.bytes().all(|b| !b.is_ascii_uppercase());
    if !lower || hex::decode_to_slice(event_hash_hex, &mut bytes).is_err() {
        return Err(ProofError::BadEventHash(event_hash_hex.chars().take(80).collect()));
    }
    Ok(leaf_hash(&bytes))
}

/// The Merkle Tree Hash of `leaves` (leaf hashes), straight from the definition. O(n).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The largest power of two strictly smaller than `n` (for `n >= 2`): where RFC 6962 splits a tree.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The incremental state of a tree: one perfect-subtree root per set bit of its size, largest
/// (leftmost) first — a "compact range" over `[0, size)`. Appending a leaf costs O(1) hashes
/// amortised, computing the root O(log n), and the state is O(log n) hashes, so a log can sign a
/// checkpoint at any size without rereading its events.
///
/// Serialised as `{"size": 6, "nodes": ["<hex>", "<hex>"]}`; deserialising checks that the node
/// count matches the size.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "CompactTreeRepr", into = "CompactTreeRepr")]
pub struct CompactTree {
    size: u64,
    nodes: Vec<Hash>,
}

impl CompactTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tree over `leaves` (leaf hashes).
    pub fn from_leaves<'a>(leaves: impl IntoIterator<Item = &'a Hash>) -> Self {
        let mut tree = Self::new();
        for leaf in leaves {
            tree.push(*leaf);
        }
        tree
    }

    /// Appends a leaf hash (for an event: [`event_leaf_hash`]).
    pub fn push(&mut self, leaf_hash: Hash) {
        // Binary increment: each trailing one bit of the size is a subtree of the new leaf's
        // height that it now completes.
        let mut hash = leaf_hash;
        let mut carry = self.size;
        while carry & 1 == 1 {
            let left = self.nodes.pop().expect("one node per set bit of the size");
            hash = node_hash(&left, &hash);
            carry >>= 1;
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root hash ([`EMPTY_ROOT`] when it is empty).
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return EMPTY_ROOT;
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }
}

impl Extend<Hash> for CompactTree {
    fn extend<I: IntoIterator<Item = Hash>>(&mut self, leaves: I) {
        for leaf in leaves {
            self.push(leaf);
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactTreeRepr {
    size: u64,
    nodes: Vec<String>,
}

impl From<CompactTree> for CompactTreeRepr {
    fn from(tree: CompactTree) -> Self {
        CompactTreeRepr { size: tree.size, nodes: tree.nodes.iter().map(hex::encode).collect() }
    }
}

impl TryFrom<CompactTreeRepr> for CompactTree {
    type Error = String;

    fn try_from(repr: CompactTreeRepr) -> Result<Self, String> {
        if repr.nodes.len() != repr.size.count_ones() as usize {
            return Err(format!(
                "a compact tree of size {} has {} nodes, not {}",
                repr.size,
                repr.size.count_ones(),
                repr.nodes.len()
            ));
        }
        let nodes = repr
            .nodes
            .iter()
            .map(|node| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(node, &mut hash)
                    .map(|()| hash)
                    .map_err(|_| format!("compact tree node {node:?} is not 64 hex digits"))
            })
            .collect::<Result<_, _>>()?;
        Ok(CompactTree { size: repr.size, nodes })
    }
}

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {size} is larger than the {available} leaves given")]
    NotEnoughLeaves { size: u64, available: u64 },
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    SizesOutOfOrder { old_size: u64, new_size: u64 },
    #[error("proof has {actual} hashes where a proof for these sizes has {expected}")]
    WrongLength { expected: usize, actual: usize },
    #[error("inclusion proof does not lead to the root hash")]
    RootMismatch,
    #[error("consistency proof does not lead to the old root hash")]
    OldRootMismatch,
    #[error("consistency proof does not lead to the new root hash")]
    NewRootMismatch,
    #[error("event hash {0:?} is not 64 lower-case hex digits")]
    BadEventHash(String),
}

/// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 §2.1.3.1),
/// ordered from the leaf's sibling up to the root's child. O(size) hashing.
pub fn inclusion_proof(leaves: &[Hash], index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
    let leaves = prefix(leaves, size)?;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    path(index as usize, leaves, &mut proof);
    Ok(proof)
}

/// `PATH(m, D[n])`, appending from the bottom up.
fn path(m: usize, leaves: &[Hash], proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n as u64) as usize;
    if m < k {
        path(m, &leaves[..k], proof);
        proof.push(root(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], proof);
        proof.push(root(&leaves[..k]));
    }
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = path_len(index, size);
    if proof.len() != expected {
        return Err(ProofError::WrongLength { expected, actual: proof.len() });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn == 0 && r == *root { Ok(()) } else { Err(ProofError::RootMismatch) }
}

/// The number of hashes in the audit path of `index` in a tree of `size` (`index < size`).
fn path_len(index: u64, size: u64) -> usize {
    if size <= 1 {
        return 0;
    }
    let k = split(size);
    1 + if index < k { path_len(index, k) } else { path_len(index - k, size - k) }
}

/// The proof that the tree of the first `old_size` leaves is a prefix of the tree of the first
/// `new_size` (RFC 9162 §2.1.4.1). Empty when `old_size` is 0 or equals `new_size`. O(new_size).
pub fn consistency_proof(
    leaves: &[Hash],
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofError> {
    let leaves = prefix(leaves, new_size)?;
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old_size, new_size });
    }
    let mut proof = Vec::new();
    if old_size > 0 {
        subproof(old_size as usize, leaves, true, &mut proof);
    }
    Ok(proof)
}

/// `SUBPROOF(m, D[n], b)`, appending from the bottom up.
fn subproof(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split(n as u64) as usize;
    if m <= k {
        subproof(m, &leaves[..k], complete, proof);
        proof.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root(&leaves[..k]));
    }
}

/// The number of hashes in the consistency proof from `old_size` to `new_size`.
fn subproof_len(m: u64, n: u64, complete: bool) -> usize {
    if m == n {
        return usize::from(!complete);
    }
    let k = split(n);
    1 + if m <= k { subproof_len(m, k, complete) } else { subproof_len(m - k, n - k, false) }
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2, plus the trivial cases it leaves
/// out: equal sizes need equal roots and an empty proof; an old tree of size 0 needs the empty
/// root and an empty proof).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old_size, new_size });
    }
    let expected = if old_size == 0 { 0 } else { subproof_len(old_size, new_size, true) };
    if proof.len() != expected {
        return Err(ProofError::WrongLength { expected, actual: proof.len() });
    }
    if old_size == 0 {
        return if *old_root == EMPTY_ROOT { Ok(()) } else { Err(ProofError::OldRootMismatch) };
    }
    if old_size == new_size {
        return if old_root == new_root { Ok(()) } else { Err(ProofError::NewRootMismatch) };
    }

    // Here 0 < old_size < new_size, so the proof is not empty. When the old tree is a perfect
    // subtree of the new one, its root is the path's starting point and is not in the proof.
    let mut path = proof.iter();
    let seed = if old_size.is_power_of_two() {
        old_root
    } else {
        path.next().ok_or(ProofError::OldRootMismatch)?
    };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for c in path {
        if sn == 0 {
            return Err(ProofError::NewRootMismatch);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sn != 0 || sr != *new_root {
        return Err(ProofError::NewRootMismatch);
    }
    Ok(())
}

fn prefix(leaves: &[Hash], size: u64) -> Result<&[Hash], ProofError> {
    let available = leaves.len() as u64;
    if size > available {
        return Err(ProofError::NotEnoughLeaves { size, available });
    }
    Ok(&leaves[..size as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 64;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn h(hex_str: &str) -> Hash {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).unwrap();
        out
    }

    /// MTH written independently of `root`: hash pairs level by level, carrying an odd last node
    /// up unchanged — the same tree as RFC 6962's left-heavy split.
    fn level_root(leaves: &[Hash]) -> Hash {
        if leaves.is_empty() {
            return EMPTY_ROOT;
        }
        let mut level = leaves.to_vec();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [odd] => *odd,
                    _ => unreachable!(),
                })
                .collect();
        }
        level[0]
    }

    fn flip(proof: &[Hash], at: usize) -> Vec<Hash> {
        let mut proof = proof.to_vec();
        proof[at][0] ^= 0x08;
        proof
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
        assert_eq!(CompactTree::new().root(), EMPTY_ROOT);
        assert_eq!(root(&[]), EMPTY_ROOT);
    }

    #[test]
    fn compact_tree_agrees_with_the_definition() {
        let all = leaves(300);
        let mut tree = CompactTree::new();
        for n in 0..=300u64 {
            assert_eq!(tree.size(), n);
            assert_eq!(tree.nodes.len(), n.count_ones() as usize);
            let want = root(&all[..n as usize]);
            assert_eq!(tree.root(), want, "size {n}");
            assert_eq!(level_root(&all[..n as usize]), want, "size {n}");
            if let Some(leaf) = all.get(n as usize) {
                tree.push(*leaf);
            }
        }
        assert_eq!(CompactTree::from_leaves(&all[..77]).root(), root(&all[..77]));
        let mut extended = CompactTree::new();
        extended.extend(all[..77].iter().copied());
        assert_eq!(extended, CompactTree::from_leaves(&all[..77]));
    }

    #[test]
    fn compact_tree_round_trips_through_serde_and_rejects_bad_state() {
        for n in [0u64, 1, 6, 7, 64, 77] {
            let tree = CompactTree::from_leaves(&leaves(n));
            let json = serde_json::to_string(&tree).unwrap();
            let back: CompactTree = serde_json::from_str(&json).unwrap();
            assert_eq!(back, tree);
            assert_eq!(back.root(), tree.root());
        }
        let json = serde_json::to_value(CompactTree::from_leaves(&leaves(6))).unwrap();
        assert_eq!(json["size"], 6);
        assert_eq!(json["nodes"].as_array().unwrap().len(), 2);

        let wrong_count = r#"{"size": 3, "nodes": ["00"]}"#;
        let error = serde_json::from_str::<CompactTree>(wrong_count).unwrap_err();
        assert!(error.to_string().contains("has 2 nodes, not 1"), "{error}");
        let bad_hex = format!(r#"{{"size": 1, "nodes": ["{}"]}}"#, "zz".repeat(32));
        assert!(serde_json::from_str::<CompactTree>(&bad_hex).is_err());
        let short = r#"{"size": 1, "nodes": ["abcd"]}"#;
        assert!(serde_json::from_str::<CompactTree>(short).is_err());
        let unknown = r#"{"size": 0, "nodes": [], "extra": 1}"#;
        assert!(serde_json::from_str::<CompactTree>(unknown).is_err());
    }

    #[test]
    fn event_leaf_hash_decodes_the_hex_hash() {
        let event_hash = "ab".repeat(32);
        assert_eq!(event_leaf_hash(&event_hash).unwrap(), leaf_hash(&[0xab; 32]));
        for bad in ["", "ab", &"AB".repeat(32), &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(matches!(event_leaf_hash(bad), Err(ProofError::BadEventHash(_))), "{bad}");
        }
    }

    // Known answers: the RFC 6962 test vectors used by Go's reference implementation
    // (transparency-dev/merkle, proof/verify_test.go). Leaf data, roots for sizes 1..=8, and
    // proofs (their leaf numbers are 1-based).
    const KAT_LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const KAT_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn kat_leaves() -> Vec<Hash> {
        KAT_LEAVES.iter().map(|data| leaf_hash(&hex::decode(data).unwrap())).collect()
    }

    #[test]
    fn known_answer_roots() {
        let leaves = kat_leaves();
        let mut tree = CompactTree::new();
        for (n, want) in KAT_ROOTS.iter().enumerate() {
            tree.push(leaves[n]);
            assert_eq!(tree.root(), h(want), "size {}", n + 1);
            assert_eq!(root(&leaves[..=n]), h(want), "size {}", n + 1);
        }
    }

    #[test]
    fn known_answer_inclusion_proofs() {
        let leaves = kat_leaves();
        let vectors: [(u64, u64, &[&str]); 5] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (3, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            (
                2,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (leaf, size, want) in vectors {
            let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
            let index = leaf - 1;
            assert_eq!(inclusion_proof(&leaves, index, size).unwrap(), want);
            let root = h(KAT_ROOTS[size as usize - 1]);
            verify_inclusion(&leaves[index as usize], index, size, &want, &root).unwrap();
        }
    }

    #[test]
    fn known_answer_consistency_proofs() {
        let leaves = kat_leaves();
        let vectors: [(u64, u64, &[&str]); 5] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, new, want) in vectors {
            let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
            assert_eq!(consistency_proof(&leaves, old, new).unwrap(), want);
            let (old_root, new_root) =
                (h(KAT_ROOTS[old as usize - 1]), h(KAT_ROOTS[new as usize - 1]));
            verify_consistency(old, new, &old_root, &new_root, &want).unwrap();
        }
    }

    #[test]
    fn every_inclusion_proof_up_to_64_verifies_and_resists_tampering() {
        let all = leaves(MAX);
        let roots: Vec<Hash> = (0..=MAX).map(|n| root(&all[..n as usize])).collect();
        let proofs: std::collections::HashMap<(u64, u64), Vec<Hash>> = (1..=MAX)
            .flat_map(|size| (0..size).map(move |index| (index, size)))
            .map(|(index, size)| ((index, size), inclusion_proof(&all, index, size).unwrap()))
            .collect();
        for size in 1..=MAX {
            let root = &roots[size as usize];
            for index in 0..size {
                let leaf = &all[index as usize];
                let proof = &proofs[&(index, size)];
                assert_eq!(proof.len(), path_len(index, size));
                verify_inclusion(leaf, index, size, proof, root)
                    .unwrap_or_else(|e| panic!("index {index} size {size}: {e}"));

                let fails = |leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash| {
                    verify_inclusion(leaf, index, size, proof, root).is_err()
                };
                // Every bit of the proof matters, and so do the leaf, the root and the index.
                for at in 0..proof.len() {
                    assert!(fails(leaf, index, size, &flip(proof, at), root));
                }
                assert!(fails(&all[(index as usize + 1) % MAX as usize], index, size, proof, root));
                assert!(fails(leaf, index, size, proof, &roots[size as usize - 1]));
                for other in (0..size).filter(|&i| i != index) {
                    assert!(fails(leaf, other, size, proof, root), "{index} as {other}");
                }
                // Dropped, added or reordered hashes.
                if let Some((_, shorter)) = proof.split_last() {
                    assert!(fails(leaf, index, size, shorter, root));
                }
                let mut longer = proof.clone();
                longer.push(*root);
                assert!(fails(leaf, index, size, &longer, root));
                let mut preceded = vec![*leaf];
                preceded.extend_from_slice(proof);
                assert!(fails(leaf, index, size, &preceded, root));
                if proof.len() > 1 {
                    let mut swapped = proof.clone();
                    swapped.swap(0, 1);
                    assert!(fails(leaf, index, size, &swapped, root));
                }
                // Against any other tree size, this proof passes only where it is also that
                // size's proof for the leaf.
                for other in (index + 1..=MAX).filter(|&s| s != size) {
                    let theirs = &proofs[&(index, other)];
                    let ok = !fails(leaf, index, other, proof, &roots[other as usize]);
                    assert_eq!(ok, theirs == proof, "index {index}: size {size} as {other}");
                }
            }
            assert_eq!(
                verify_inclusion(&all[0], size, size, &[], root),
                Err(ProofError::IndexOutOfRange { index: size, size })
            );
        }
    }

    #[test]
    fn every_consistency_proof_up_to_64_verifies_and_resists_tampering() {
        let all = leaves(MAX);
        let roots: Vec<Hash> = (0..=MAX).map(|n| root(&all[..n as usize])).collect();
        let r = |n: u64| &roots[n as usize];
        let proofs: std::collections::HashMap<(u64, u64), Vec<Hash>> = (0..=MAX)
            .flat_map(|new| (0..=new).map(move |old| (old, new)))
            .map(|(old, new)| ((old, new), consistency_proof(&all, old, new).unwrap()))
            .collect();
        for new in 0..=MAX {
            for old in 0..=new {
                let proof = &proofs[&(old, new)];
                verify_consistency(old, new, r(old), r(new), proof)
                    .unwrap_or_else(|e| panic!("{old} -> {new}: {e}"));
                let fails = |old: u64, new: u64, old_root: &Hash, new_root: &Hash, p: &[Hash]| {
                    verify_consistency(old, new, old_root, new_root, p).is_err()
                };

                for at in 0..proof.len() {
                    assert!(
                        fails(old, new, r(old), r(new), &flip(proof, at)),
                        "{old}->{new} bit {at}"
                    );
                }
                if old > 0 && old < new {
                    assert!(!proof.is_empty());
                    assert!(fails(old, new, r(old), r(new), &[]));
                    assert!(fails(old, new, r(old), r(new), &proof[..proof.len() - 1]));
                    assert!(fails(old, new, r(new), r(old), proof));
                    let mut preceded = vec![proof[0]];
                    preceded.extend_from_slice(proof);
                    assert!(fails(old, new, r(old), r(new), &preceded));
                }
                let mut longer = proof.clone();
                longer.push(*r(new));
                assert!(fails(old, new, r(old), r(new), &longer));
                // Another root on either side fails: those of neighbouring sizes, the empty
                // tree's, and an unrelated hash. (An empty old tree is consistent with any new
                // root.)
                let nearby = |n: u64| n.saturating_sub(2)..=(n + 2).min(MAX);
                let others = |n: u64| {
                    let mut hashes: Vec<Hash> = nearby(n).map(|o| *r(o)).collect();
                    hashes.extend([EMPTY_ROOT, leaf_hash(b"unrelated")]);
                    hashes.retain(|hash| hash != r(n));
                    hashes
                };
                for other in others(old) {
                    assert!(fails(old, new, &other, r(new), proof), "{old}->{new}: old root");
                }
                for other in others(new).iter().filter(|_| old > 0) {
                    assert!(fails(old, new, r(old), other, proof), "{old}->{new}: new root");
                }
                // Against other sizes with their true roots, the proof passes only where it is
                // also the proof for those sizes.
                for other_old in (0..=new).filter(|&o| o != old) {
                    let theirs = &proofs[&(other_old, new)];
                    let ok = !fails(other_old, new, r(other_old), r(new), proof);
                    assert_eq!(ok, theirs == proof, "{old}->{new} as {other_old}->{new}");
                }
            }
        }
    }

    #[test]
    fn consistency_edge_cases() {
        let all = leaves(8);
        let (r0, r3, r8) = (EMPTY_ROOT, root(&all[..3]), root(&all));
        assert_eq!(verify_consistency(0, 8, &r0, &r8, &[]), Ok(()));
        assert_eq!(verify_consistency(0, 0, &r0, &r0, &[]), Ok(()));
        assert_eq!(verify_consistency(0, 8, &r3, &r8, &[]), Err(ProofError::OldRootMismatch));
        assert_eq!(
            verify_consistency(0, 8, &r0, &r8, &[r0]),
            Err(ProofError::WrongLength { expected: 0, actual: 1 })
        );
        assert_eq!(verify_consistency(8, 8, &r8, &r8, &[]), Ok(()));
        assert_eq!(verify_consistency(8, 8, &r8, &r3, &[]), Err(ProofError::NewRootMismatch));
        assert_eq!(
            verify_consistency(8, 3, &r8, &r3, &[]),
            Err(ProofError::SizesOutOfOrder { old_size: 8, new_size: 3 })
        );
        let proof = consistency_proof(&all, 3, 8).unwrap();
        assert_eq!(verify_consistency(3, 8, &r8, &r8, &proof), Err(ProofError::OldRootMismatch));
        assert_eq!(verify_consistency(3, 8, &r3, &r3, &proof), Err(ProofError::NewRootMismatch));
    }

    #[test]
    fn proof_generation_rejects_bad_arguments() {
        let all = leaves(8);
        assert_eq!(
            inclusion_proof(&all, 8, 8),
            Err(ProofError::IndexOutOfRange { index: 8, size: 8 })
        );
        assert_eq!(
            inclusion_proof(&all, 0, 9),
            Err(ProofError::NotEnoughLeaves { size: 9, available: 8 })
        );
        assert_eq!(
            inclusion_proof(&all, 0, 0),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            consistency_proof(&all, 5, 4),
            Err(ProofError::SizesOutOfOrder { old_size: 5, new_size: 4 })
        );
        assert_eq!(
            consistency_proof(&all, 5, 9),
            Err(ProofError::NotEnoughLeaves { size: 9, available: 8 })
        );
        // Proofs only look at the first `size` leaves.
        assert_eq!(inclusion_proof(&all, 2, 5).unwrap(), inclusion_proof(&all[..5], 2, 5).unwrap());
    }

    #[test]
    fn proofs_for_large_sizes_verify() {
        // Beyond the exhaustive range: sizes around powers of two up to 2^12.
        let all = leaves(4100);
        let mut tree = CompactTree::new();
        let mut checkpoints = Vec::new();
        for (i, leaf) in all.iter().enumerate() {
            tree.push(*leaf);
            let n = i as u64 + 1;
            if n.is_power_of_two()
                || (n + 1).is_power_of_two()
                || n.is_multiple_of(997)
                || n == 4100
            {
                checkpoints.push((n, tree.root()));
            }
        }
        for &(size, root) in &checkpoints {
            for index in [0, size / 3, size - 1] {
                let proof = inclusion_proof(&all, index, size).unwrap();
                verify_inclusion(&all[index as usize], index, size, &proof, &root).unwrap();
            }
        }
        for pair in checkpoints.windows(2) {
            let ((old, old_root), (new, new_root)) = (pair[0], pair[1]);
            let proof = consistency_proof(&all, old, new).unwrap();
            verify_consistency(old, new, &old_root, &new_root, &proof).unwrap();
        }
    }
}
