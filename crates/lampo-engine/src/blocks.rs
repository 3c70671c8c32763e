//! Bookkeeping of the paged KV cache: which blocks are free, which hold a
//! known prefix, and how many sequences use each. The keys and values
//! themselves live in the model's `KvStore`; this only hands out block ids.
//!
//! A full block is named by a chained hash of its tokens and the hash of
//! the block before it, so equal hashes mean equal prefixes (the tokens
//! are kept and compared too: a hash collision is a miss, never a wrong
//! answer). Blocks no sequence uses keep their contents and their name
//! until space is needed, oldest use first, so a later request with the
//! same prefix skips computing it.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

pub type BlockId = u32;

/// The name of a full block: its tokens after a given prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockKey {
    pub hash: u64,
    parent: u64,
    tokens: Vec<u32>,
}

impl BlockKey {
    /// The keys of the full blocks of `tokens` from block `from` on, given
    /// the key of block `from - 1` (`None` at the start).
    pub fn chain(
        tokens: &[u32],
        block_size: usize,
        from: usize,
        before: Option<&BlockKey>,
    ) -> Vec<BlockKey> {
        let mut parent = before.map_or(0, |k| k.hash);
        tokens
            .chunks_exact(block_size)
            .skip(from)
            .map(|t| {
                let mut h = DefaultHasher::new();
                parent.hash(&mut h);
                t.hash(&mut h);
                let key = BlockKey {
                    hash: h.finish(),
                    parent,
                    tokens: t.to_vec(),
                };
                parent = key.hash;
                key
            })
            .collect()
    }
}

/// What the cache knows about a prefix block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Computed: usable at once.
    Ready(BlockId),
    /// Being computed by a running sequence: usable once it is done.
    Pending,
    Missing,
}

#[derive(Clone, Default)]
struct Block {
    refs: u32,
    key: Option<BlockKey>,
    ready: bool,
    /// When the last user let go of it (for least-recently-used eviction).
    released_at: u64,
}

pub struct BlockPool {
    blocks: Vec<Block>,
    /// Unnamed blocks nobody uses.
    free: Vec<BlockId>,
    /// Named, computed blocks nobody uses, by release time: reusable by
    /// name, or evicted oldest first.
    idle: BTreeSet<(u64, BlockId)>,
    by_hash: HashMap<u64, BlockId>,
    clock: u64,
}

impl BlockPool {
    pub fn new(n_blocks: usize) -> BlockPool {
        BlockPool {
            blocks: vec![Block::default(); n_blocks],
            free: (0..n_blocks as BlockId).rev().collect(),
            idle: BTreeSet::new(),
            by_hash: HashMap::new(),
            clock: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be handed out now (free or idle).
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Blocks some sequence uses.
    pub fn in_use(&self) -> usize {
        self.total() - self.available()
    }

    /// Whether block `id` holds a prefix nobody uses now.
    pub fn is_idle(&self, id: BlockId) -> bool {
        self.blocks[id as usize].refs == 0
    }

    pub fn lookup(&self, key: &BlockKey) -> Lookup {
        match self.by_hash.get(&key.hash) {
            Some(&id) if self.blocks[id as usize].key.as_ref() == Some(key) => {
                if self.blocks[id as usize].ready {
                    Lookup::Ready(id)
                } else {
                    Lookup::Pending
                }
            }
            _ => Lookup::Missing,
        }
    }

    /// Takes one more use of block `id` (found by `lookup`).
    pub fn share(&mut self, id: BlockId) {
        let b = &mut self.blocks[id as usize];
        if b.refs == 0 {
            self.idle.remove(&(b.released_at, id));
        }
        b.refs += 1;
    }

    /// An unused block, evicting the least recently used named one when
    /// no unnamed block is left.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.idle.pop_first()?;
                self.unname(id);
                id
            }
        };
        let b = &mut self.blocks[id as usize];
        b.refs = 1;
        b.ready = false;
        Some(id)
    }

    /// Names block `id` (still being computed) by `key`, so that others
    /// with the same prefix wait for it instead of computing it again;
    /// unless another block already has that name.
    pub fn name(&mut self, id: BlockId, key: &BlockKey) {
        if self.blocks[id as usize].key.is_some() || self.by_hash.contains_key(&key.hash) {
            return;
        }
        self.by_hash.insert(key.hash, id);
        self.blocks[id as usize].key = Some(key.clone());
    }

    /// Marks block `id`'s contents, the block named by `key`, computed.
    pub fn complete(&mut self, id: BlockId, key: &BlockKey) {
        self.name(id, key);
        self.blocks[id as usize].ready = true;
    }

    /// Drops one use of block `id`. A named, computed block stays findable
    /// until evicted; a block whose contents were never finished is
    /// unnamed and freed.
    pub fn release(&mut self, id: BlockId) {
        let b = &mut self.blocks[id as usize];
        debug_assert!(b.refs > 0, "block {id} released more than taken");
        b.refs = b.refs.saturating_sub(1);
        if b.refs > 0 {
            return;
        }
        if b.key.is_some() && b.ready {
            self.clock += 1;
            b.released_at = self.clock;
            self.idle.insert((self.clock, id));
        } else {
            self.unname(id);
            self.free.push(id);
        }
    }

    fn unname(&mut self, id: BlockId) {
        if let Some(key) = self.blocks[id as usize].key.take() {
            self.by_hash.remove(&key.hash);
        }
        self.blocks[id as usize].ready = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(tokens: &[u32]) -> Vec<BlockKey> {
        BlockKey::chain(tokens, 4, 0, None)
    }

    #[test]
    fn chained_keys_name_whole_prefixes() {
        let a = keys(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(a.len(), 2, "only full blocks are named");
        let b = keys(&[9, 9, 9, 9, 5, 6, 7, 8]);
        // Same tokens after a different prefix: a different block.
        assert_ne!(a[1].hash, b[1].hash);
        let tail = BlockKey::chain(&[1, 2, 3, 4, 5, 6, 7, 8], 4, 1, Some(&a[0]));
        assert_eq!(tail, a[1..].to_vec());
    }

    #[test]
    fn named_blocks_are_reused_until_evicted_oldest_first() {
        let mut pool = BlockPool::new(3);
        let k = keys(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let ids: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(pool.allocate(), None);
        for (id, key) in ids.iter().zip(&k) {
            pool.name(*id, key);
        }
        assert_eq!(pool.lookup(&k[0]), Lookup::Pending);
        pool.complete(ids[0], &k[0]);
        pool.complete(ids[1], &k[1]);
        assert_eq!(pool.lookup(&k[0]), Lookup::Ready(ids[0]));
        // Released in order 1, 0; block 2 never finished: freed unnamed.
        pool.release(ids[1]);
        pool.release(ids[0]);
        pool.release(ids[2]);
        assert_eq!(pool.lookup(&k[2]), Lookup::Missing);
        assert_eq!((pool.available(), pool.in_use()), (3, 0));
        // A user of block 0 returns; the next two allocations take the
        // unnamed block, then evict the oldest idle one (block 1).
        pool.share(ids[0]);
        assert_eq!(pool.allocate(), Some(ids[2]));
        assert_eq!(pool.allocate(), Some(ids[1]));
        assert_eq!(pool.lookup(&k[1]), Lookup::Missing);
        assert_eq!(pool.lookup(&k[0]), Lookup::Ready(ids[0]));
        assert_eq!(pool.allocate(), None);
    }

    #[test]
    fn a_hash_collision_is_a_miss() {
        let mut pool = BlockPool::new(1);
        let mut k = keys(&[1, 2, 3, 4]);
        let id = pool.allocate().unwrap();
        pool.complete(id, &k[0]);
        k[0].tokens[0] = 7;
        assert_eq!(pool.lookup(&k[0]), Lookup::Missing);
    }
}
