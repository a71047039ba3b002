//! Files written so that a reader never sees half of one.

use std::fs;
use std::io::Write;
use std::path::Path;

/// What a temporary file's name holds between the target's name and the writer's process id:
/// `.NAME.attnbench-tmp-PID`.
const TMP_MARK: &str = ".attnbench-tmp-";
/// The mark of the temporary files earlier versions wrote, `.NAME.tmp-PID`.
const LEGACY_TMP_MARK: &str = ".tmp-";

/// Writes `bytes` to `path` atomically: a temporary file in the same directory
/// (`.NAME.attnbench-tmp-PID`), flushed to disk, then renamed over `path`. An interruption
/// leaves either the old file or the new one, and at worst the temporary file of a killed
/// process, which the next write of the same file removes ([`remove_stale_temporaries`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    remove_stale_temporaries(dir, &name);
    let tmp = dir.join(format!(".{name}{TMP_MARK}{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes from `dir` the temporary files that [`write_atomic`] (or an earlier version of it)
/// left for the file `name` when its process was killed: `.NAME.attnbench-tmp-PID` and
/// `.NAME.tmp-PID` whose process no longer runs. Only where `/proc` tells which processes run
/// (Linux); nothing else is touched, and a file that cannot be removed is left.
pub fn remove_stale_temporaries(dir: &Path, name: &str) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|f| temporary_pid(f, name)) else {
            continue;
        };
        if !proc.join(pid).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The process id in `file_name` when it is a temporary file of `name`, e.g. `"123"` for
/// `.results.json.attnbench-tmp-123` and `results.json`.
fn temporary_pid<'a>(file_name: &'a str, name: &str) -> Option<&'a str> {
    let rest = file_name.strip_prefix('.')?.strip_prefix(name)?;
    let pid = rest
        .strip_prefix(TMP_MARK)
        .or_else(|| rest.strip_prefix(LEGACY_TMP_MARK))?;
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_recognised_only_for_their_file() {
        let name = "results.json";
        assert_eq!(
            temporary_pid(".results.json.attnbench-tmp-123", name),
            Some("123")
        );
        assert_eq!(temporary_pid(".results.json.tmp-9", name), Some("9"));
        for other in [
            "results.json",
            ".results.json",
            ".results.json.attnbench-tmp-",
            ".results.json.attnbench-tmp-12a",
            ".results.md.attnbench-tmp-12",
            ".results.json.bak-12",
            "x.results.json.tmp-12",
        ] {
            assert_eq!(temporary_pid(other, name), None, "{other}");
        }
    }
}
