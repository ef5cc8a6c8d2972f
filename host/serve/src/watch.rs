//! The pipelines directory, looked at every `scan_interval`: a new file starts its pipeline, a
//! changed one restarts it, a removed one stops it (with a final checkpoint). Only the pipeline
//! whose file changed is touched.
//!
//! Polling rather than file-system events: it sees the same thing on every file system
//! (network mounts, config maps swapped by symlink), and a file's text — not its timestamp —
//! decides whether it changed, so an editor that rewrites a file unchanged restarts nothing.
//! A file that does not parse is reported once and leaves its running pipeline as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::pipelines::{Format, Origin, PipelineId, Pipelines, id_of_file};

/// Applies the directory to `pipelines` until `stop` is set.
pub async fn run(pipelines: Arc<Pipelines>, dir: PathBuf, mut stop: watch::Receiver<bool>) {
    let every = pipelines.config().scan_interval;
    let mut reported = BTreeMap::new();
    loop {
        scan(&pipelines, &dir, &mut reported).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One look at the directory. `reported` remembers the text of files already reported as bad.
pub async fn scan(pipelines: &Pipelines, dir: &Path, reported: &mut BTreeMap<PathBuf, String>) {
    let files = match read_dir(dir) {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the pipelines directory");
            return;
        }
    };
    let known = pipelines.from_files();
    let mut seen = BTreeSet::new();
    for (path, (id, format)) in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        seen.insert(id.clone());
        if known.get(&id) == Some(&text) || reported.get(&path) == Some(&text) {
            continue;
        }
        match pipelines.put(&id, Origin::File, text.clone(), format).await {
            Ok(_) => {
                reported.remove(&path);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "pipeline file refused; the running pipeline, if any, is unchanged");
                reported.insert(path, text);
            }
        }
    }
    for id in known.keys().filter(|id| !seen.contains(*id)) {
        if let Err(e) = pipelines.remove(id, Origin::File).await {
            tracing::warn!(pipeline = %id, error = %e, "cannot remove the pipeline of a deleted file");
        }
    }
}

/// The pipeline files under `dir`: `<tenant>/<name>.toml|json`.
fn read_dir(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, (PipelineId, Format)>> {
    let mut files = BTreeMap::new();
    for tenant in std::fs::read_dir(dir)? {
        let tenant = tenant?.path();
        if !tenant.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&tenant)? {
            let path = file?.path();
            if let Some(id) = id_of_file(dir, &path) {
                files.insert(path, id);
            }
        }
    }
    Ok(files)
}
