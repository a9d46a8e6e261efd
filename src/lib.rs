#![warn(missing_docs)]
//! High-availability protocols — a consistent-hashing [`ring`], a Raft
//! replicated [`log`], a fenced [`lock`] service and two-phase-commit
//! transactions ([`txn`]) — written once against an abstract clock, network
//! and disk ([`env`](mod@env)), so the same code runs under a seeded deterministic
//! simulator (the `ringfence-sim` crate) and for real on tokio over TCP
//! ([`real`]).
//!
//! # Quick start
//!
//! A 3-node cluster inside this process, a lock taken as a guard (renewed
//! in the background, released when dropped) and a write fenced by its
//! token:
//!
//! ```
//! use std::time::Duration;
//!
//! use ringfence::lock::FencedResource;
//! use ringfence::real::embedded::EmbeddedCluster;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let dir = std::env::temp_dir().join(format!("ringfence-quickstart-{}", std::process::id()));
//!     let cluster = EmbeddedCluster::start(&dir, 3).await?;
//!
//!     let locks = cluster.lock_client(); // Clone: share it between tasks
//!     locks.open().await?; // a session; the TTL comes from the servers
//!     let mut ledger = FencedResource::new();
//!     let guard = locks.lock("ledger", Duration::from_secs(5)).await?;
//!     guard.write(&mut ledger, 42)?; // refused once a newer holder wrote
//!     guard.release().await?;
//!
//!     cluster.shutdown().await;
//!     std::fs::remove_dir_all(&dir)?;
//!     Ok(())
//! }
//! ```
//!
//! Against a cluster of `ringfence node` processes, build the client from
//! the cluster file instead: [`real::cluster::ClusterConfig::load`] gives
//! the servers, and [`real::RealEnv::client`] connects with a client key.
//!
//! # Where to look
//!
//! - [`lock::LockClient`], [`lock::LockGuard`], [`lock::FencedResource`]:
//!   locks the tokio way — every async method cancel-safe;
//! - [`txn::client::TxnClient::run`]: transactions retried on abort;
//! - [`ring::RingView`], [`ring::diff_keys`]: key placement and what moves;
//! - [`real::embedded::EmbeddedCluster`]: a cluster for tests and examples.
//!
//! `examples/` has one program per service (`cargo run --example lock`),
//! and `docs/library.md` sets them beside etcd-client and hashring.

pub mod check;
pub mod effects;
pub mod env;
pub mod history;
pub mod lock;
pub mod log;
pub mod observe;
pub mod real;
pub mod ring;
pub mod shard;
pub mod txn;
