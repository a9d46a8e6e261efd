//! One lock client over every group of a sharded lock service.
//!
//! A sharded deployment splits lock names between groups by the ring view
//! the directory holds ([`crate::shard::directory`]). A session belongs to
//! one group, so this client keeps one [`LockClient`] (one session) per
//! group, opened the first time a name routes there, all reading one
//! inbox. It asks the group the cached view names; when a group answers
//! `NotServed { epoch }` (the name moved, or is moving), it reads the
//! views again and follows the name ([`Router`]), waiting briefly while
//! the name is between groups. A lease names the group that granted it.
//!
//! Given one group and no directory, it is a plain client of that group,
//! so code written against it runs on a deployment that is not sharded.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use super::{ClientConfig, Lease, LockClient, LockError, LockGuard, LockView, SessionId};
use crate::env::{Env, NodeId};
use crate::log::client::Inbox;
use crate::shard::directory::Router;
use crate::shard::GroupId;

/// How long the client waits before asking again for a name that no
/// group serves yet (its move is being installed).
const MOVING_RETRY: Duration = Duration::from_millis(20);

/// A grant of a sharded lock service: the lease and the group and
/// session that hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedLease {
    /// The group that granted the lock.
    pub group: GroupId,
    /// The session of that group it was granted to.
    pub session: SessionId,
    /// The grant.
    pub lease: Lease,
}

/// A lock client of a sharded lock service: see the module docs.
pub struct ShardedLockClient<E: Env> {
    env: E,
    groups: BTreeMap<GroupId, LockClient<E>>,
    /// `None` with one group and no directory.
    router: Option<Router<E>>,
    /// How long `try_acquire` and `status` follow a name between groups.
    follow: Duration,
}

impl<E: Env> ShardedLockClient<E> {
    /// A client of the lock groups `groups` (each group's servers) whose
    /// ring view the directory on `directory` holds (none for a single
    /// group that is not sharded). The client reads `env`'s inbox:
    /// nothing else on that node may.
    pub fn new(env: E, groups: BTreeMap<GroupId, Vec<NodeId>>, directory: Vec<NodeId>, config: ClientConfig) -> Self {
        assert!(!groups.is_empty(), "a sharded client needs at least one group");
        assert!(
            groups.len() == 1 || !directory.is_empty(),
            "several groups need the directory that routes between them"
        );
        let inbox = Inbox::new(env.clone());
        let follow = config.request_timeout;
        let groups = groups
            .into_iter()
            .map(|(group, servers)| {
                let client = LockClient::sharing(env.clone(), inbox.clone(), servers, config.clone());
                (group, client)
            })
            .collect();
        ShardedLockClient {
            router: (!directory.is_empty()).then(|| Router::new(inbox, directory)),
            env,
            groups,
            follow,
        }
    }

    /// The client of group `group` (its session's state, `status`,
    /// `keep_alive`), if this client was given that group.
    pub fn group(&self, group: GroupId) -> Option<&LockClient<E>> {
        self.groups.get(&group)
    }

    /// Whether `lease` is still valid on this node's clock: the session
    /// it was granted to is the group's current one (not ended and
    /// replaced since) and its lease has not run out.
    pub fn is_valid(&self, lease: &ShardedLease) -> bool {
        let client = self.groups.get(&lease.group);
        client.is_some_and(|c| c.session() == lease.session && c.is_valid())
    }

    /// Takes `name`, waiting in line for at most `wait`, from whichever
    /// group serves it ([`LockClient::acquire`]).
    pub async fn acquire(&mut self, name: &str, wait: Duration) -> Result<ShardedLease, LockError> {
        let owned = name.to_string();
        let (group, lease) = self
            .routed(name, wait, |client, left| {
                let name = owned.clone();
                async move { client.acquire(&name, left).await }
            })
            .await?;
        Ok(self.lease(group, lease))
    }

    /// Takes `name` if it is free ([`LockClient::try_acquire`]).
    pub async fn try_acquire(&mut self, name: &str) -> Result<ShardedLease, LockError> {
        let owned = name.to_string();
        let (group, lease) = self
            .routed(name, self.follow, |client, _| {
                let name = owned.clone();
                async move { client.try_acquire(&name).await }
            })
            .await?;
        Ok(self.lease(group, lease))
    }

    /// Takes `name` as a self-renewing, self-releasing guard
    /// ([`LockClient::lock`]) of the group that serves it, named with it.
    pub async fn lock(&mut self, name: &str, wait: Duration) -> Result<(GroupId, LockGuard<E>), LockError> {
        let owned = name.to_string();
        self.routed(name, wait, |client, left| {
            let name = owned.clone();
            async move { client.lock(&name, left).await }
        })
        .await
    }

    /// The holder and the waiters of `name` at the group that serves it
    /// ([`LockClient::status`]), with that group.
    pub async fn status(&mut self, name: &str) -> Result<(GroupId, LockView), LockError> {
        let owned = name.to_string();
        self.routed(name, self.follow, |client, _| {
            let name = owned.clone();
            async move { client.status(&name).await }
        })
        .await
    }

    /// Releases `lease` at the group that granted it. A lock that moved
    /// since was taken from this session with the move: `NotOwner`.
    pub async fn release(&self, lease: &ShardedLease) -> Result<(), LockError> {
        match self.groups.get(&lease.group) {
            // Granted to a session the group has ended since.
            Some(client) if client.session() != lease.session => Err(LockError::NotOwner),
            Some(client) => match client.release(&lease.lease).await {
                Err(LockError::NotServed { .. } | LockError::SessionExpired) => Err(LockError::NotOwner),
                other => other,
            },
            None => Err(LockError::NotOwner),
        }
    }

    /// Ends every session this client opened, releasing all it holds.
    pub async fn close(&self) -> Result<(), LockError> {
        let mut result = Ok(());
        for client in self.groups.values().filter(|c| c.ttl().is_some()) {
            if let Err(e) = client.close().await {
                result = Err(e);
            }
        }
        result
    }

    /// A lease of `group`'s current session.
    fn lease(&self, group: GroupId, lease: Lease) -> ShardedLease {
        let session = self.groups[&group].session();
        ShardedLease { group, session, lease }
    }

    /// Runs `op` on the group serving `name` (with the time left of
    /// `wait`), following the name to another group while groups answer
    /// that they do not serve it, for at most `wait`; once in a call, on
    /// a new session when the group ended the last one.
    async fn routed<T, F>(
        &mut self,
        name: &str,
        wait: Duration,
        op: impl Fn(LockClient<E>, Duration) -> F,
    ) -> Result<(GroupId, T), LockError>
    where
        F: Future<Output = Result<T, LockError>>,
    {
        let start = self.env.now();
        let left = |env: &E| wait.saturating_sub(env.now().saturating_sub(start));
        // With no view (none recorded yet, or the directory out of
        // reach), the lowest group: the one that founds a deployment and
        // serves every name until the first view. Were it the wrong one,
        // it answers `NotServed` and the views are read again.
        let founder = *self.groups.keys().next().expect("at least one group");
        let mut group = match &mut self.router {
            Some(router) => router.route(name.as_bytes()).await.unwrap_or(founder),
            None => founder,
        };
        let mut reopened = false;
        // The group that refused the name before the current one: sent
        // back to it, the name is between the two (fenced at one, not yet
        // installed at the other), so wait a moment first.
        let mut refused_before = None;
        loop {
            let client = self.opened(group).await?;
            match op(client.clone(), left(&self.env)).await {
                // A lock of this session moved while held: the source ended
                // the session (every lock of it is lost, as its leases and
                // guards report). A new one asks again.
                Err(LockError::SessionExpired) if !reopened && !left(&self.env).is_zero() => {
                    reopened = true;
                    client.reopen().await?;
                }
                Err(LockError::NotServed { epoch }) if !left(&self.env).is_zero() && self.router.is_some() => {
                    let router = self.router.as_mut().expect("guarded");
                    let next = router.after_refusal(name.as_bytes(), group, epoch).await;
                    if next.is_none() || next == refused_before {
                        self.env.sleep(MOVING_RETRY).await;
                    }
                    refused_before = Some(group);
                    group = next.unwrap_or(group);
                }
                other => return other.map(|value| (group, value)),
            }
        }
    }

    /// Group `group`'s client with its session open: opened on first use,
    /// and opened again under a new id once its lease ran out.
    async fn opened(&self, group: GroupId) -> Result<LockClient<E>, LockError> {
        let client = self
            .groups
            .get(&group)
            .ok_or(LockError::UnknownGroup { group })?
            .clone();
        if client.ttl().is_none() {
            client.open().await?;
        } else if !client.is_valid() {
            client.reopen().await?;
        }
        Ok(client)
    }
}
