//! The Merkle tree of a checkpoint kept on disk, one file per level, so that `export` proves
//! every event of a ledger of any size in constant memory: building the levels hashes each node
//! once, and each proof then reads one node per level. Recomputing subtree roots from the leaves
//! for every proof (`merkle::inclusion_proof`) costs O(n) per proof, O(n²) for a bundle.
//!
//! Each level pairs the nodes below it from the left and carries a lone last node up unchanged.
//! That builds the same tree as RFC 9162's split at the largest power of two below n (the tests
//! compare every proof with `merkle::inclusion_proof`).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::record::merkle::{EMPTY_ROOT, Hash, node_hash};

const NODE: u64 = 32;

/// Collects the leaves of the tree into its bottom level file.
pub struct LeafWriter {
    dir: tempfile::TempDir,
    out: BufWriter<File>,
    count: u64,
}

impl LeafWriter {
    /// Starts a tree whose files live in a new hidden directory under `parent` (removed when the
    /// tree is dropped). The bundle's own directory is used rather than the system temp
    /// directory, which may be a RAM-backed tmpfs.
    pub fn new_in(parent: &Path) -> io::Result<LeafWriter> {
        let dir = tempfile::Builder::new().prefix(".mcp-ledger-tree-").tempdir_in(parent)?;
        let out = BufWriter::new(File::create(level_path(dir.path(), 0))?);
        Ok(LeafWriter { dir, out, count: 0 })
    }

    pub fn push(&mut self, leaf: &Hash) -> io::Result<()> {
        self.count += 1;
        self.out.write_all(leaf)
    }

    /// Builds every level above the leaves.
    pub fn finish(mut self) -> io::Result<LevelFiles> {
        self.out.flush()?;
        drop(self.out);
        let mut sizes = vec![self.count];
        while let Some(&below) = sizes.last().filter(|&&n| n > 1) {
            let level = sizes.len();
            let mut input = BufReader::new(File::open(level_path(self.dir.path(), level - 1))?);
            let mut output = BufWriter::new(File::create(level_path(self.dir.path(), level))?);
            let mut left = [0u8; 32];
            let mut right = [0u8; 32];
            for _ in 0..below / 2 {
                input.read_exact(&mut left)?;
                input.read_exact(&mut right)?;
                output.write_all(&node_hash(&left, &right))?;
            }
            if below % 2 == 1 {
                input.read_exact(&mut left)?;
                output.write_all(&left)?;
            }
            output.flush()?;
            sizes.push(below.div_ceil(2));
        }
        Ok(LevelFiles { dir: self.dir, sizes })
    }
}

/// A finished tree: `sizes[k]` nodes at level `k`, the leaves at level 0.
pub struct LevelFiles {
    dir: tempfile::TempDir,
    sizes: Vec<u64>,
}

impl LevelFiles {
    pub fn size(&self) -> u64 {
        self.sizes[0]
    }

    pub fn root(&self) -> io::Result<Hash> {
        if self.size() == 0 {
            return Ok(EMPTY_ROOT);
        }
        let mut root = [0u8; 32];
        File::open(level_path(self.dir.path(), self.sizes.len() - 1))?.read_exact(&mut root)?;
        Ok(root)
    }

    /// Reads proofs for leaves in ascending order; each level is read forward only.
    pub fn prover(&self) -> io::Result<Prover> {
        let levels = (0..self.sizes.len().saturating_sub(1))
            .map(|level| {
                Ok(LevelCursor {
                    reader: BufReader::new(File::open(level_path(self.dir.path(), level))?),
                    len: self.sizes[level],
                    next: 0,
                    pair: None,
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Prover { levels, size: self.size(), last_index: None })
    }
}

fn level_path(dir: &Path, level: usize) -> PathBuf {
    dir.join(format!("level-{level}"))
}

pub struct Prover {
    levels: Vec<LevelCursor>,
    size: u64,
    last_index: Option<u64>,
}

impl Prover {
    /// The audit path of leaf `index`, from its sibling up (as `merkle::inclusion_proof`).
    /// Indices must not decrease from one call to the next.
    pub fn proof(&mut self, index: u64) -> io::Result<Vec<Hash>> {
        if index >= self.size {
            return Err(io::Error::other(format!(
                "leaf {index} is outside a tree of {}",
                self.size
            )));
        }
        if self.last_index.is_some_and(|last| index < last) {
            return Err(io::Error::other("proofs must be read in ascending leaf order"));
        }
        self.last_index = Some(index);
        let mut proof = Vec::with_capacity(self.levels.len());
        let mut node = index;
        for level in &mut self.levels {
            let sibling = node ^ 1;
            if sibling < level.len {
                proof.push(level.node(sibling)?);
            }
            node >>= 1;
        }
        Ok(proof)
    }
}

/// Forward-only reading of one level, one pair of siblings at a time.
struct LevelCursor {
    reader: BufReader<File>,
    len: u64,
    /// The index of the node the reader is positioned at.
    next: u64,
    /// The pair last read: the index of its left node and both nodes (the right may be absent).
    pair: Option<(u64, Hash, Option<Hash>)>,
}

impl LevelCursor {
    fn node(&mut self, index: u64) -> io::Result<Hash> {
        let start = index & !1;
        if self.pair.as_ref().is_none_or(|(at, _, _)| *at != start) {
            if start < self.next {
                return Err(io::Error::other("a level was read backwards"));
            }
            let skip = (start - self.next) * NODE;
            self.reader.seek_relative(skip as i64)?;
            let mut left = [0u8; 32];
            self.reader.read_exact(&mut left)?;
            let right = if start + 1 < self.len {
                let mut right = [0u8; 32];
                self.reader.read_exact(&mut right)?;
                Some(right)
            } else {
                None
            };
            self.next = start + 1 + u64::from(right.is_some());
            self.pair = Some((start, left, right));
        }
        let (_, left, right) = self.pair.as_ref().expect("just read");
        match (index & 1, right) {
            (0, _) => Ok(*left),
            (_, Some(right)) => Ok(*right),
            (_, None) => Err(io::Error::other(format!("node {index} is past the level's end"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::merkle::{inclusion_proof, leaf_hash, root};

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn tree(leaves: &[Hash], parent: &Path) -> LevelFiles {
        let mut writer = LeafWriter::new_in(parent).unwrap();
        for leaf in leaves {
            writer.push(leaf).unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn every_proof_and_root_match_the_reference_for_sizes_up_to_70() {
        let parent = tempfile::tempdir().unwrap();
        for size in 0..=70 {
            let leaves = leaves(size);
            let files = tree(&leaves, parent.path());
            assert_eq!(files.root().unwrap(), root(&leaves), "root of {size}");
            let mut prover = files.prover().unwrap();
            for index in 0..size {
                assert_eq!(
                    prover.proof(index).unwrap(),
                    inclusion_proof(&leaves, index, size).unwrap(),
                    "proof of {index} in {size}"
                );
            }
        }
    }

    #[test]
    fn sparse_ascending_reads_skip_ahead_and_repeats_are_fine() {
        let parent = tempfile::tempdir().unwrap();
        let leaves = leaves(1000);
        let files = tree(&leaves, parent.path());
        let mut prover = files.prover().unwrap();
        for index in [3, 3, 4, 517, 518, 998, 999] {
            assert_eq!(
                prover.proof(index).unwrap(),
                inclusion_proof(&leaves, index, 1000).unwrap()
            );
        }
        assert!(prover.proof(5).is_err(), "backwards");
        assert!(files.prover().unwrap().proof(1000).is_err(), "outside");
        assert!(tree(&leaves[..1], parent.path()).prover().unwrap().proof(1).is_err());
    }

    #[test]
    fn the_files_go_away_with_the_tree() {
        let parent = tempfile::tempdir().unwrap();
        drop(tree(&leaves(5), parent.path()));
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
