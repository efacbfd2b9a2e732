//! Release directories as deploy tools lay them out: `releases/v1`, `releases/v2` and a
//! relative `current` symlink naming v1, in a temporary directory. A test deploys by
//! moving the symlink atomically, as a deploy tool does.

use std::path::{Path, PathBuf};

/// The layout, removed when dropped.
pub struct Releases {
    dir: tempfile::TempDir,
}

impl Releases {
    pub fn new() -> Releases {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["v1", "v2"] {
            std::fs::create_dir_all(dir.path().join("releases").join(name)).expect("release dir");
        }
        std::os::unix::fs::symlink("releases/v1", dir.path().join("current"))
            .expect("current link");
        Releases { dir }
    }

    /// The directory holding `releases/` and `current`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory of one release.
    pub fn release(&self, name: &str) -> PathBuf {
        self.path().join("releases").join(name)
    }

    /// Points `current` at `release` through a rename, as a deploy tool does.
    pub fn deploy(&self, release: &str) {
        let tmp = self.path().join(".deploy");
        std::os::unix::fs::symlink(format!("releases/{release}"), &tmp).expect("temporary link");
        std::fs::rename(&tmp, self.path().join("current")).expect("rename over current");
    }

    /// What `current` points at, e.g. `releases/v1`.
    pub fn current(&self) -> String {
        std::fs::read_link(self.path().join("current"))
            .expect("current is a link")
            .display()
            .to_string()
    }
}
