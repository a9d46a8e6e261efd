//! The node set of a view and its validation.
//!
//! Every placement is built from a slice of [`NodeSpec`] and checked here
//! first, so a bad membership change (an empty set, a node listed twice, a
//! zero weight, more replicas than nodes) is a [`ViewError`] the caller can
//! report, not a panic or a silently degenerate ring.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A storage node is named by the crate-wide [`crate::env::NodeId`],
/// the id the node has on the network and in the cluster file. Placement
/// depends only on this id (and the node's weight), never on its position
/// in the node list, so reordering the list does not move keys (except for
/// [`super::JumpView`], whose buckets are positions by design).
pub use crate::env::NodeId;

/// A failure domain (rack, availability zone). Preference lists put
/// replicas in distinct zones before they reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ZoneId(pub u32);

/// One member of a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The node's id.
    pub id: NodeId,
    /// Relative capacity. A node of weight 2 gets twice the virtual points
    /// (ring), twice the score weight (rendezvous) and twice the load cap
    /// (bounded-load) of a node of weight 1. Must be at least 1.
    pub weight: u32,
    /// The node's failure domain; a node without a zone counts as a zone of
    /// its own.
    pub zone: Option<ZoneId>,
}

impl NodeSpec {
    /// A node of weight 1 with no zone.
    pub fn new(id: NodeId) -> Self {
        NodeSpec {
            id,
            weight: 1,
            zone: None,
        }
    }

    /// This node with relative capacity `weight`.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// This node in failure domain `zone`.
    pub fn with_zone(mut self, zone: u32) -> Self {
        self.zone = Some(ZoneId(zone));
        self
    }
}

/// Upper bound on the node count of one view. The ring stores node indexes
/// as `u16` next to each point, which halves its hot lookup table; 65 536
/// storage nodes per view is far beyond any cluster this targets.
pub const MAX_NODES: usize = 1 << 16;

/// Upper bound on R. Replica selection keeps its state in fixed arrays of
/// this size, so a lookup never allocates.
pub const MAX_REPLICAS: usize = 16;

/// Why a view could not be built.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // each variant's message says what it means
pub enum ViewError {
    #[error("a view needs at least one node")]
    NoNodes,
    #[error("node {0} is listed more than once")]
    DuplicateNode(NodeId),
    #[error("node {0} has weight 0; weights must be at least 1")]
    ZeroWeight(NodeId),
    #[error("{replicas} replicas requested but the view has only {nodes} nodes")]
    TooManyReplicas { replicas: usize, nodes: usize },
    #[error("{replicas} replicas requested; the limit is {max}")]
    ReplicasAboveLimit { replicas: usize, max: usize },
    #[error("a view needs at least one replica")]
    ZeroReplicas,
    #[error("{nodes} nodes exceed the limit of {max}")]
    TooManyNodes { nodes: usize, max: usize },
    #[error("the ring needs at least one virtual node per unit of weight")]
    ZeroVnodes,
    #[error("the ring would have {points} points, above the limit of {max}")]
    TooManyPoints { points: u64, max: u64 },
    #[error("node {node} has weight {weight}; this placement supports only weight 1")]
    WeightUnsupported { node: NodeId, weight: u32 },
    #[error("bounded-load epsilon must lie in [1e-6, 1000], got {0}")]
    BadEpsilon(f64),
}

/// The validated node set shared by every placement: the nodes in the order
/// given, plus a dense "zone class" per node used by replica selection.
#[derive(Clone, Debug)]
pub struct Members {
    pub(crate) nodes: Vec<NodeSpec>,
    /// Dense zone class per node index: nodes sharing a `ZoneId` share a
    /// class, a node without a zone has a class of its own.
    pub(crate) zone_class: Vec<u32>,
    /// Number of distinct zone classes.
    pub(crate) zones: usize,
    pub(crate) replicas: usize,
    pub(crate) epoch: u64,
}

impl Members {
    /// Checks `nodes` and `replicas` and precomputes the zone classes.
    pub fn new(epoch: u64, nodes: &[NodeSpec], replicas: usize) -> Result<Self, ViewError> {
        if nodes.is_empty() {
            return Err(ViewError::NoNodes);
        }
        if nodes.len() > MAX_NODES {
            return Err(ViewError::TooManyNodes {
                nodes: nodes.len(),
                max: MAX_NODES,
            });
        }
        let mut seen = BTreeMap::new();
        let mut zone_ids: BTreeMap<ZoneId, u32> = BTreeMap::new();
        let mut zone_class = Vec::with_capacity(nodes.len());
        let mut next_class = 0u32;
        for n in nodes {
            if seen.insert(n.id, ()).is_some() {
                return Err(ViewError::DuplicateNode(n.id));
            }
            if n.weight == 0 {
                return Err(ViewError::ZeroWeight(n.id));
            }
            let class = match n.zone {
                Some(z) => *zone_ids.entry(z).or_insert_with(|| {
                    next_class += 1;
                    next_class - 1
                }),
                None => {
                    next_class += 1;
                    next_class - 1
                }
            };
            zone_class.push(class);
        }
        if replicas == 0 {
            return Err(ViewError::ZeroReplicas);
        }
        if replicas > MAX_REPLICAS {
            return Err(ViewError::ReplicasAboveLimit {
                replicas,
                max: MAX_REPLICAS,
            });
        }
        if replicas > nodes.len() {
            return Err(ViewError::TooManyReplicas {
                replicas,
                nodes: nodes.len(),
            });
        }
        Ok(Members {
            nodes: nodes.to_vec(),
            zone_class,
            zones: next_class as usize,
            replicas,
            epoch,
        })
    }

    /// Rejects any node whose weight is not 1 (for placements that cannot
    /// weight, such as jump hash).
    pub(crate) fn require_unweighted(&self) -> Result<(), ViewError> {
        match self.nodes.iter().find(|n| n.weight != 1) {
            Some(n) => Err(ViewError::WeightUnsupported {
                node: n.id,
                weight: n.weight,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn total_weight(&self) -> u64 {
        self.nodes.iter().map(|n| u64::from(n.weight)).sum()
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<NodeSpec>()
            + self.zone_class.capacity() * std::mem::size_of::<u32>()
    }
}
