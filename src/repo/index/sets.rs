//! Index trees of format 2's snapshot side: the snapshot summary cache and cached pack
//! sizes. Both caches: losing them costs a re-read, never a wrong answer.

use super::{Id, Index, IndexError};

/// Manifest id → `verified by MAC u8 ‖ manifest JSON`.
const SUMMARIES: &str = "snapshots";
/// Pack id → size in bytes (u64 LE). A pack is named by its hash, so its size never
/// changes.
const PACK_SIZES: &str = "pack_sizes";
impl Index {
    fn cache_tree(&self, name: &str) -> Result<sled::Tree, IndexError> {
        self.db.open_tree(name).map_err(|e| self.err(e))
    }

    /// A cached manifest: its JSON and whether its MAC was verified when cached.
    pub fn cached_manifest(&self, id: &Id) -> Result<Option<(bool, Vec<u8>)>, IndexError> {
        Ok(self
            .cache_tree(SUMMARIES)?
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
        self.cache_tree(SUMMARIES)?
            .insert(id.0, value)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn uncache_manifest(&self, id: &Id) -> Result<(), IndexError> {
        self.cache_tree(SUMMARIES)?
            .remove(id.0)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every manifest id in the cache (to drop those whose file is gone).
    pub fn cached_manifest_ids(&self) -> Result<Vec<Id>, IndexError> {
        self.cache_tree(SUMMARIES)?
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
            self.cache_tree(name)?.clear().map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    pub fn pack_size(&self, pack: &Id) -> Result<Option<u64>, IndexError> {
        Ok(self
            .cache_tree(PACK_SIZES)?
            .get(pack.0)
            .map_err(|e| self.err(e))?
            .and_then(|v| Some(u64::from_le_bytes(v.as_ref().try_into().ok()?))))
    }

    pub fn set_pack_size(&self, pack: &Id, size: u64) -> Result<(), IndexError> {
        self.cache_tree(PACK_SIZES)?
            .insert(pack.0, &size.to_le_bytes())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Drops cached sizes of packs not in `keep`.
    pub fn retain_pack_sizes(&self, keep: &dyn Fn(&Id) -> bool) -> Result<(), IndexError> {
        let t = self.cache_tree(PACK_SIZES)?;
        for k in t.iter().keys() {
            let k = k.map_err(|e| self.err(e))?;
            if Id::from_slice(&k).is_none_or(|id| !keep(&id)) {
                t.remove(k).map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Index;
    use super::*;

    #[test]
    fn manifest_cache_and_pack_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i")).unwrap();
        let (m, p, q) = (Id::of(b"m"), Id::of(b"p"), Id::of(b"q"));
        assert!(idx.cached_manifest(&m).unwrap().is_none());
        idx.cache_manifest(&m, true, b"{}").unwrap();
        assert_eq!(
            idx.cached_manifest(&m).unwrap(),
            Some((true, b"{}".to_vec()))
        );
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
