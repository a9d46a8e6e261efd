//! An operator's procedures on a group: add a member, remove one, replace
//! one whose disk was lost. Each is a sequence of the single-server changes
//! of [`super::membership`], each asked against the configuration the
//! leader just reported ([`Client::reconfigure`]'s `base`) and retried
//! while the leader asks to wait (a change in progress, a leader whose term
//! has not committed, a learner still catching up) or the configuration
//! moved under it.
//!
//! Every step is idempotent (a change already made is answered as done),
//! so a procedure cut short by a timeout or a crash of the operator's
//! process is finished by running it again.

use std::time::Duration;

use super::client::{Client, ClientError};
use super::membership::{Change, ConfigStatus, Refusal};
use super::state_machine::StateMachine;
use super::types::Reject;
use crate::env::{Env, NodeId};

/// How long to wait before asking again when the leader says to wait.
pub const RETRY: Duration = Duration::from_millis(100);

/// Why a procedure did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each variant's message says what it means
pub enum AdminError {
    /// The leader refused the change for a reason waiting does not fix.
    #[error("{change:?} refused: {refusal}")]
    Refused { change: Change, refusal: Refusal },
    /// No leader answered in time, or it kept asking to wait; `last` is
    /// the last reason it gave. Run the procedure again to finish it.
    #[error("{change:?} not done in time{}", last.map(|r| format!(" (last refusal: {r})")).unwrap_or_default())]
    Timeout { change: Change, last: Option<Refusal> },
    /// The group answered something no leader gives.
    #[error("{change:?}: {reject:?}")]
    Rejected { change: Change, reject: Reject },
}

/// The leader's configuration and what it knows of each member.
pub async fn status<E: Env, S: StateMachine>(
    client: &mut Client<E, S>,
    give_up: Duration,
) -> Result<ConfigStatus, ClientError> {
    client.config_status(give_up).await
}

/// Makes `node` a voter: a learner first, promoted once it has caught up
/// (in the incarnation the leader hears it in). A voter already is done.
pub async fn add_member<E: Env, S: StateMachine>(
    client: &mut Client<E, S>,
    node: NodeId,
    give_up: Duration,
) -> Result<ConfigStatus, AdminError> {
    let end = client.env().now() + give_up;
    let added = change(client, Change::AddLearner(node), end).await;
    unless_done(client, added, end, |s| s.membership.contains(node)).await?;
    let promoted = change(client, Change::Promote(node), end).await;
    unless_done(client, promoted, end, |s| s.membership.voters.contains_key(&node)).await
}

/// Takes `node` out of the group (a member not in it is done). A leader
/// that removes itself steps down once the change commits.
pub async fn remove_member<E: Env, S: StateMachine>(
    client: &mut Client<E, S>,
    node: NodeId,
    give_up: Duration,
) -> Result<ConfigStatus, AdminError> {
    let end = client.env().now() + give_up;
    let removed = change(client, Change::Remove(node), end).await;
    unless_done(client, removed, end, |s| !s.membership.contains(node)).await
}

/// A step's `result`, except a change the leader found not applicable
/// because what it asks is already so (`done` holds of the status): a
/// procedure cut short and run again passes over what it finished.
async fn unless_done<E: Env, S: StateMachine>(
    client: &mut Client<E, S>,
    result: Result<ConfigStatus, AdminError>,
    end: Duration,
    done: impl Fn(&ConfigStatus) -> bool,
) -> Result<ConfigStatus, AdminError> {
    match result {
        Err(AdminError::Refused {
            refusal: Refusal::NotApplicable,
            change,
        }) => {
            let status = status_until(client, change, end).await?;
            if done(&status) {
                Ok(status)
            } else {
                Err(AdminError::Refused {
                    change,
                    refusal: Refusal::NotApplicable,
                })
            }
        }
        other => other,
    }
}

/// Replaces the member `node` by a node of the same id on a new disk
/// (started with [`super::membership::Boot::Join`]): the voter is removed
/// (with the incarnation it had), then the node is added again and
/// promoted in the incarnation the leader hears once it has caught up.
/// A learner is only added (a replacement cut short). Only while the other
/// voters make a majority without it; run against a healthy voter it
/// removes and adds the same disk back, which is safe but pointless.
pub async fn replace_member<E: Env, S: StateMachine>(
    client: &mut Client<E, S>,
    node: NodeId,
    give_up: Duration,
) -> Result<ConfigStatus, AdminError> {
    let end = client.env().now() + give_up;
    let status = status_until(client, Change::Remove(node), end).await?;
    if status.membership.voters.contains_key(&node) {
        remove_member(client, node, end.saturating_sub(client.env().now())).await?;
    }
    add_member(client, node, end.saturating_sub(client.env().now())).await
}

/// Hands the group's leadership to the voter `to` (planned maintenance of
/// the leader's machine): answered once the leader told `to` to campaign;
/// `to` then wins the next term unless a fault intervenes.
pub async fn transfer_leadership<E: Env, S: StateMachine>(
    client: &mut Client<E, S>,
    to: NodeId,
    give_up: Duration,
) -> Result<ConfigStatus, AdminError> {
    let end = client.env().now() + give_up;
    change(client, Change::TransferLeadership(to), end).await
}

/// Asks for `change` until it is made or refused for good, or `end`: each
/// attempt against the configuration the leader reports then.
async fn change<E: Env, S: StateMachine>(
    client: &mut Client<E, S>,
    change: Change,
    end: Duration,
) -> Result<ConfigStatus, AdminError> {
    let mut last = None;
    loop {
        let base = status_until(client, change, end).await?.index;
        let left = end.saturating_sub(client.env().now());
        if left.is_zero() {
            return Err(AdminError::Timeout { change, last });
        }
        match client.reconfigure(change, base, left).await {
            Ok(status) => return Ok(status),
            Err(ClientError::Timeout) => return Err(AdminError::Timeout { change, last }),
            Err(ClientError::Rejected(Reject::Reconfiguration(refusal))) => match refusal {
                // Another change came first: look again at once.
                Refusal::Stale => {
                    last = Some(refusal);
                    continue;
                }
                Refusal::ChangeInProgress
                | Refusal::LeaderNotReady
                | Refusal::LearnerBehind
                | Refusal::WouldLoseQuorum => last = Some(refusal),
                Refusal::NotApplicable | Refusal::LastVoter | Refusal::TooMany | Refusal::TargetBehind => {
                    return Err(AdminError::Refused { change, refusal })
                }
            },
            Err(ClientError::Rejected(reject)) => return Err(AdminError::Rejected { change, reject }),
        }
        client.env().sleep(RETRY).await;
    }
}

/// The leader's status, asked until `end` (for `change`'s errors).
async fn status_until<E: Env, S: StateMachine>(
    client: &mut Client<E, S>,
    change: Change,
    end: Duration,
) -> Result<ConfigStatus, AdminError> {
    let left = end.saturating_sub(client.env().now());
    if left.is_zero() {
        return Err(AdminError::Timeout { change, last: None });
    }
    client
        .config_status(left)
        .await
        .map_err(|_| AdminError::Timeout { change, last: None })
}
