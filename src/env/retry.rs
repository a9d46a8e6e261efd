//! Asking one peer over a lossy network: send, wait for the answer, resend.
//!
//! Every client in the crate that talks to a single node (the transaction
//! client to a shard or a coordinator replica, the lock scenario's clients
//! to the fenced resource, the counter tutorial to its server) goes through
//! these two functions, so the rules live in one place:
//! - a request is encoded once and resent unchanged, so a retry is a
//!   duplicate the server can recognise;
//! - while waiting, every message the caller's `accept` refuses (a late
//!   reply to an earlier request, another peer's message, a frame that does
//!   not decode) is dropped, and the wait goes on;
//! - `None` means no accepted answer came: the outcome is unknown, not
//!   failed, since the request may have been applied and its reply lost.

use std::time::Duration;

use super::{timeout, Env, NodeId};

/// How many times a request is sent, and how long each send waits for its
/// answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Sends before giving up (`0` sends nothing).
    pub attempts: u32,
    /// Wait for an answer after each send, on the caller's clock.
    pub wait: Duration,
}

impl Retry {
    /// Sends `request` to `to` until `accept` takes a reply, at most
    /// [`Retry::attempts`] times; `None` if every wait ran out.
    pub async fn call<E: Env, T>(
        self,
        env: &E,
        to: NodeId,
        request: &[u8],
        mut accept: impl FnMut(NodeId, &[u8]) -> Option<T>,
    ) -> Option<T> {
        for _ in 0..self.attempts {
            if let Some(answer) = exchange(env, to, request, self.wait, &mut accept).await {
                return Some(answer);
            }
        }
        None
    }
}

/// One send of `request` to `to` and a wait of at most `wait` for a message
/// that `accept` takes (it is given the sender and the frame); the messages
/// it refuses are dropped.
pub async fn exchange<E: Env, T>(
    env: &E,
    to: NodeId,
    request: &[u8],
    wait: Duration,
    mut accept: impl FnMut(NodeId, &[u8]) -> Option<T>,
) -> Option<T> {
    let _ = env.send(to, request.to_vec()).await;
    let answer = async {
        loop {
            let (from, frame) = env.recv().await;
            if let Some(value) = accept(from, &frame) {
                return value;
            }
        }
    };
    timeout(env, wait, answer).await
}
