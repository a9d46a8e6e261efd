//! Replica selection shared by every placement: turn a placement's
//! candidate order (ring walk, jump attempts, rendezvous scores) into a
//! preference list of R distinct nodes that covers as many distinct zones
//! as the view has before it reuses a zone.

use super::view::{Members, NodeId, MAX_REPLICAS};

/// Picks `members.replicas` nodes from `candidates` (node indexes, possibly
/// repeating), optionally starting from a fixed `first` node.
///
/// Order of the result: nodes that brought a new zone, in candidate order,
/// then (only when the view has fewer zones than R) the earliest skipped
/// nodes of already-used zones. The candidates must eventually name every
/// node, or the list comes out short (debug-asserted).
///
/// R is capped at [`MAX_REPLICAS`] by view validation, so fixed arrays hold
/// all state: the hot path never allocates, and linear scans over at most
/// 16 entries beat any set structure.
pub(crate) fn select<I>(members: &Members, first: Option<u32>, candidates: I, out: &mut Vec<NodeId>)
where
    I: IntoIterator<Item = u32>,
{
    out.clear();
    let r = members.replicas;
    debug_assert!(r <= MAX_REPLICAS);
    let want_zones = r.min(members.zones);
    let want_extra = r - want_zones;
    let mut picked = [0u32; MAX_REPLICAS];
    let mut zones = [0u32; MAX_REPLICAS];
    let mut extra = [0u32; MAX_REPLICAS];
    let (mut np, mut ne) = (0usize, 0usize);

    let mut consider = |idx: u32| -> bool {
        let zone = members.zone_class[idx as usize];
        if zones[..np].contains(&zone) {
            // Same zone as an earlier pick (or the same node): usable only
            // in the fill-up phase, and only once.
            if ne < want_extra && !picked[..np].contains(&idx) && !extra[..ne].contains(&idx) {
                extra[ne] = idx;
                ne += 1;
            }
        } else if np < want_zones {
            picked[np] = idx;
            zones[np] = zone;
            np += 1;
        }
        np >= want_zones && ne >= want_extra
    };

    let done = first.is_some_and(&mut consider);
    if !done {
        for idx in candidates {
            if consider(idx) {
                break;
            }
        }
    }
    out.extend(picked[..np].iter().map(|&i| members.nodes[i as usize].id));
    out.extend(extra[..ne].iter().map(|&i| members.nodes[i as usize].id));
    debug_assert_eq!(out.len(), r, "candidates did not cover every node");
}
