//! Index trees of format 2's snapshot side: prune's disk-backed mark set, the snapshot
//! summary cache, and cached pack sizes. All caches: losing them costs a re-read, never
//! a wrong answer.

use super::{Id, Index, IndexError};

/// Mark sets live in trees named `mark/<nonce>`; one left by a killed prune is dropped
/// when the index is next opened (no prune can be running then: sled's lock keeps a
/// second process out of the persistent index).
const MARK_PREFIX: &[u8] = b"mark/";
/// Manifest id → `verified by MAC u8 ‖ manifest JSON`.
const SUMMARIES: &str = "snapshots";
/// Pack id → size in bytes (u64 LE). A pack is named by its hash, so its size never
/// changes.
const PACK_SIZES: &str = "pack_sizes";
/// Ids inserted per sled batch when marking.
const MARK_BATCH: usize = 4096;

const UNCLAIMED: u8 = 0;
const CLAIMED: u8 = 1;

/// A set of live blob ids on disk, for prune's mark and sweep: RAM stays at sled's page
/// cache however many blobs a repository has. Each id carries a claimed flag, so the
/// sweep keeps exactly one copy of a duplicated blob. Dropped with the value.
pub struct MarkSet<'a> {
    index: &'a Index,
    name: Vec<u8>,
    tree: sled::Tree,
}

/// What the sweep learns about one copy of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Live, and this is the first copy met: keep it.
    Keep,
    /// Live, but another copy was kept already; or not live at all.
    Drop,
}

impl Index {
    /// A fresh, empty mark set.
    pub fn mark_set(&self) -> Result<MarkSet<'_>, IndexError> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        let name = [MARK_PREFIX, hex::encode(nonce).as_bytes()].concat();
        let tree = self.db.open_tree(&name).map_err(|e| self.err(e))?;
        Ok(MarkSet {
            index: self,
            name,
            tree,
        })
    }

    /// Drops mark sets of prunes that were killed. Called on open.
    pub(super) fn collect_mark_sets(&self) -> Result<usize, IndexError> {
        let mut dropped = 0;
        for name in self.db.tree_names() {
            if name.starts_with(MARK_PREFIX) {
                self.db.drop_tree(&name).map_err(|e| self.err(e))?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, IndexError> {
        self.db.open_tree(name).map_err(|e| self.err(e))
    }

    /// A cached manifest: its JSON and whether its MAC was verified when cached.
    pub fn cached_manifest(&self, id: &Id) -> Result<Option<(bool, Vec<u8>)>, IndexError> {
        Ok(self
            .tree(SUMMARIES)?
            .get(id.0)
            .map_err(|e| self.err(e))?
            .and_then(|v| {
                let (flag, json) = v.split_first()?;
                Some((*flag == 1, json.to_vec()))
            }))
    }

    /// Caches a manifest already verified against its name (and its MAC, if `mac`).
    pub fn cache_manifest(&self, id: &Id, mac: bool, json: &[u8]) -> Result<(), IndexError> {
        let value = [&[u8::from(mac)][..], json].concat();
        self.tree(SUMMARIES)?
            .insert(id.0, value)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn uncache_manifest(&self, id: &Id) -> Result<(), IndexError> {
        self.tree(SUMMARIES)?
            .remove(id.0)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every manifest id in the cache (to drop those whose file is gone).
    pub fn cached_manifest_ids(&self) -> Result<Vec<Id>, IndexError> {
        self.tree(SUMMARIES)?
            .iter()
            .keys()
            .map(|k| {
                let k = k.map_err(|e| self.err(e))?;
                Id::from_slice(&k).ok_or_else(|| IndexError::Malformed("manifest key".into()))
            })
            .collect()
    }

    /// Forgets cached manifests and pack sizes (`repair index`).
    pub fn clear_caches(&self) -> Result<(), IndexError> {
        for name in [SUMMARIES, PACK_SIZES] {
            self.tree(name)?.clear().map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    pub fn pack_size(&self, pack: &Id) -> Result<Option<u64>, IndexError> {
        Ok(self
            .tree(PACK_SIZES)?
            .get(pack.0)
            .map_err(|e| self.err(e))?
            .and_then(|v| Some(u64::from_le_bytes(v.as_ref().try_into().ok()?))))
    }

    pub fn set_pack_size(&self, pack: &Id, size: u64) -> Result<(), IndexError> {
        self.tree(PACK_SIZES)?
            .insert(pack.0, &size.to_le_bytes())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Drops cached sizes of packs not in `keep`.
    pub fn retain_pack_sizes(&self, keep: &dyn Fn(&Id) -> bool) -> Result<(), IndexError> {
        let t = self.tree(PACK_SIZES)?;
        for k in t.iter().keys() {
            let k = k.map_err(|e| self.err(e))?;
            if Id::from_slice(&k).is_none_or(|id| !keep(&id)) {
                t.remove(k).map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }
}

impl MarkSet<'_> {
    /// Whether `id` is marked.
    pub fn contains(&self, id: &Id) -> Result<bool, IndexError> {
        self.tree
            .contains_key(id.0)
            .map_err(|e| self.index.err(e))
    }

    /// Marks `ids` live (unclaimed), in bounded batches.
    pub fn insert_all<'i>(&self, ids: impl IntoIterator<Item = &'i Id>) -> Result<(), IndexError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for id in ids {
            batch.insert(&id.0[..], &[UNCLAIMED][..]);
            n += 1;
            if n == MARK_BATCH {
                self.tree
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(|e| self.index.err(e))?;
                n = 0;
            }
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.index.err(e))
    }

    /// Claims one copy of `id`: [`Claim::Keep`] for the first copy of a live blob.
    pub fn claim(&self, id: &Id) -> Result<Claim, IndexError> {
        let swapped = self
            .tree
            .compare_and_swap(id.0, Some(&[UNCLAIMED][..]), Some(&[CLAIMED][..]))
            .map_err(|e| self.index.err(e))?;
        Ok(if swapped.is_ok() {
            Claim::Keep
        } else {
            Claim::Drop
        })
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

impl Drop for MarkSet<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.index.db.drop_tree(&self.name) {
            tracing::warn!(error = %e, "mark set not dropped; the next open collects it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Index;
    use super::*;

    #[test]
    fn mark_set_claims_each_live_id_once() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i")).unwrap();
        let set = idx.mark_set().unwrap();
        let (a, b, c) = (Id::of(b"a"), Id::of(b"b"), Id::of(b"c"));
        set.insert_all([&a, &b]).unwrap();
        set.insert_all([&a]).unwrap(); // marking again leaves it unclaimed
        assert!(set.contains(&a).unwrap() && !set.contains(&c).unwrap());
        assert_eq!(set.claim(&a).unwrap(), Claim::Keep);
        assert_eq!(set.claim(&a).unwrap(), Claim::Drop, "a duplicate");
        assert_eq!(set.claim(&c).unwrap(), Claim::Drop, "not live");
        assert_eq!(set.claim(&b).unwrap(), Claim::Keep);
        assert_eq!(set.len(), 2);
        drop(set);
        assert!(
            !idx.db.tree_names().iter().any(|n| n.starts_with(MARK_PREFIX)),
            "dropped with the value"
        );
    }

    #[test]
    fn leftover_mark_sets_are_collected_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i");
        {
            let idx = Index::open(&path).unwrap();
            let set = idx.mark_set().unwrap();
            set.insert_all([&Id::of(b"a")]).unwrap();
            // What a killed prune leaves: no destructor runs.
            std::mem::forget(set);
            idx.flush().unwrap();
            assert!(idx.db.tree_names().iter().any(|n| n.starts_with(MARK_PREFIX)));
        }
        let idx = Index::open(&path).unwrap();
        assert!(!idx.db.tree_names().iter().any(|n| n.starts_with(MARK_PREFIX)));
    }

    #[test]
    fn manifest_cache_and_pack_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i")).unwrap();
        let (m, p, q) = (Id::of(b"m"), Id::of(b"p"), Id::of(b"q"));
        assert!(idx.cached_manifest(&m).unwrap().is_none());
        idx.cache_manifest(&m, true, b"{}").unwrap();
        assert_eq!(idx.cached_manifest(&m).unwrap(), Some((true, b"{}".to_vec())));
        assert_eq!(idx.cached_manifest_ids().unwrap(), vec![m]);
        idx.uncache_manifest(&m).unwrap();
        assert!(idx.cached_manifest_ids().unwrap().is_empty());
        idx.set_pack_size(&p, 7).unwrap();
        idx.set_pack_size(&q, 9).unwrap();
        idx.retain_pack_sizes(&|id| *id == q).unwrap();
        assert_eq!(idx.pack_size(&p).unwrap(), None);
        assert_eq!(idx.pack_size(&q).unwrap(), Some(9));
    }
}
