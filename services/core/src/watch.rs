//! [`Watched`]: a value loaded from files and loaded again whenever their bytes change — the TLS
//! certificates and keys, the API keys file, the JWKS. A background thread re-reads the files
//! every [`POLL`] (a few KiB: cheaper than a missed rotation, and it sees every way a file can be
//! replaced — in place, by rename, or by Kubernetes' symlink swap of a mounted Secret). A new
//! version that fails to load is logged and the last good one stays in force; the first load
//! happens at start-up and its error is the caller's.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// How often watched files are re-read.
pub const POLL: Duration = Duration::from_millis(250);

/// The current value of a set of watched files (see the module docs). Cloning shares it; the
/// watching thread ends once every clone is gone.
#[derive(Debug)]
pub struct Watched<T> {
    current: Arc<RwLock<Arc<T>>>,
}

impl<T> Clone for Watched<T> {
    fn clone(&self) -> Self {
        Self { current: self.current.clone() }
    }
}

fn read_all(paths: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    paths.iter().map(|p| std::fs::read(p).ok()).collect()
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Loads the value once (its error is returned), then keeps it current in the background.
    /// `what` names the value in log lines.
    pub fn start<E: std::fmt::Display>(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, E> + Send + 'static,
    ) -> Result<Self, E> {
        let mut seen = read_all(&paths);
        let value = load()?;
        let current = Arc::new(RwLock::new(Arc::new(value)));
        let weak: Weak<RwLock<Arc<T>>> = Arc::downgrade(&current);
        let spawned = std::thread::Builder::new().name(format!("ragd-watch-{what}")).spawn(move || {
            loop {
                std::thread::sleep(POLL);
                let Some(slot) = weak.upgrade() else { return };
                let now = read_all(&paths);
                if now == seen {
                    continue;
                }
                // A file caught half-written fails to load and is read again on the next poll.
                match load() {
                    Ok(v) => {
                        if let Ok(mut w) = slot.write() {
                            *w = Arc::new(v);
                        }
                        seen = now;
                        tracing::info!(what, "reloaded after its files changed");
                    }
                    Err(e) => {
                        seen = now;
                        tracing::error!(what, error = %e, "changed files do not load; keeping the previous version");
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(what, error = %e, "cannot start the file watcher; changes need a restart");
        }
        Ok(Self { current })
    }

    /// A value that never changes (tests, generated material).
    pub fn fixed(value: T) -> Self {
        Self { current: Arc::new(RwLock::new(Arc::new(value))) }
    }

    /// The value in force now.
    pub fn get(&self) -> Arc<T> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_file_and_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n");
        std::fs::write(&path, "1").expect("write");
        let p = path.clone();
        let w = Watched::start("test", vec![path.clone()], move || {
            std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())?
                .trim()
                .parse::<u32>()
                .map_err(|e| e.to_string())
        })
        .expect("first load");
        assert_eq!(*w.get(), 1);
        let wait_for = |want: u32| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while *w.get() != want {
                assert!(std::time::Instant::now() < deadline, "never saw {want}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        // Replaced by rename, as rotation tools do.
        std::fs::write(dir.path().join("tmp"), "2").expect("write");
        std::fs::rename(dir.path().join("tmp"), &path).expect("rename");
        wait_for(2);
        // A broken version is not taken; the next good one is.
        std::fs::write(&path, "not a number").expect("write");
        std::thread::sleep(POLL * 4);
        assert_eq!(*w.get(), 2);
        std::fs::write(&path, "3").expect("write");
        wait_for(3);
    }

    #[test]
    fn the_first_load_error_is_the_callers() {
        let r = Watched::<u32>::start("test", vec![], || Err("bad".to_string()));
        assert_eq!(r.err().as_deref(), Some("bad"));
    }
}
