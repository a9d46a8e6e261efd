//! **Planted bug**: `hash % n` placement.
//!
//! This is the "consistent hash" of the article that inspired ringfence: it
//! balances well, but changing `n` remaps almost every key (a fraction
//! `n/(n+1)` moves on add instead of `1/(n+1)`), so a node join triggers a
//! near-total data migration. It exists only so tests can show that the
//! movement properties in [`super::props`] catch it
//! (`tests/ring_props.rs::planted_modulo_bug_is_caught`). Never use it to
//! place data: no code in ringfence selects it by default, and it must be
//! named explicitly.

use super::hash::KeyHash;
use super::select::select;
use super::view::{Members, NodeSpec, ViewError};
use super::{NodeId, Placement};

/// `owner = nodes[hash % n]`. A deliberately broken placement.
#[derive(Clone, Debug)]
pub struct ModuloPlacement {
    members: Members,
}

impl ModuloPlacement {
    /// Builds the (broken) placement; validates like every other view.
    pub fn build(epoch: u64, nodes: &[NodeSpec], replicas: usize) -> Result<Self, ViewError> {
        let members = Members::new(epoch, nodes, replicas)?;
        members.require_unweighted()?;
        Ok(ModuloPlacement { members })
    }
}

impl Placement for ModuloPlacement {
    fn epoch(&self) -> u64 {
        self.members.epoch
    }

    fn nodes(&self) -> &[NodeSpec] {
        &self.members.nodes
    }

    fn replicas(&self) -> usize {
        self.members.replicas
    }

    fn owner_of_hash(&self, hash: KeyHash) -> NodeId {
        let n = self.members.nodes.len() as u64;
        self.members.nodes[(hash % n) as usize].id
    }

    fn preference_of_hash(&self, hash: KeyHash, out: &mut Vec<NodeId>) {
        let n = self.members.nodes.len() as u64;
        let start = hash % n;
        let walk = (0..n).map(move |i| ((start + i) % n) as u32);
        select(&self.members, None, walk, out);
    }
}
