//! Which cluster and member a data directory belongs to.
//!
//! A member's log says nothing about whose it is, so a directory that was
//! wiped, or copied from another member or another cluster, would otherwise
//! start as if it were this member's: an empty log forgets the votes and
//! entries the member acknowledged, a foreign log brings in another's. The
//! identity file, written once when the member's directory is initialized,
//! lets storage refuse both (see [`FileStorage`](super::FileStorage)).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env::{EnvError, NodeId};

/// A member of a cluster, as its data directory records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The cluster file's `cluster_id`.
    pub cluster_id: String,
    /// The member's node id.
    pub member: NodeId,
}

impl Identity {
    /// Member `member` of cluster `cluster_id`.
    pub fn new(cluster_id: impl Into<String>, member: NodeId) -> Identity {
        Identity {
            cluster_id: cluster_id.into(),
            member,
        }
    }

    /// Where member `id`'s identity lives in `dir`, next to its log.
    pub fn path(dir: &Path, id: NodeId) -> PathBuf {
        dir.join(format!("node-{id}.identity"))
    }

    /// The identity recorded in `path`; `None` if there is no such file.
    pub fn read(path: &Path) -> Result<Option<Identity>, EnvError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EnvError::Storage(format!("{}: read identity: {e}", path.display()))),
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| EnvError::Storage(format!("{}: unreadable identity file: {e}", path.display())))
    }

    /// Writes the identity durably: a temporary file, fsynced, renamed into
    /// place. The caller fsyncs the directory.
    pub fn write(&self, path: &Path) -> Result<(), EnvError> {
        let text = toml::to_string(self).map_err(|e| EnvError::Storage(e.to_string()))?;
        let tmp = path.with_extension("identity.tmp");
        let io = |what: &str, e: std::io::Error| EnvError::Storage(format!("{}: {what}: {e}", path.display()));
        let mut file = fs::File::create(&tmp).map_err(|e| io("create identity", e))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| io("write identity", e))?;
        file.sync_all().map_err(|e| io("fsync identity", e))?;
        fs::rename(&tmp, path).map_err(|e| io("rename identity", e))
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "member {} of cluster {:?}", self.member, self.cluster_id)
    }
}
