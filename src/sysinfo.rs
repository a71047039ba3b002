//! What the operating system says about this machine's caches (Linux's sysfs), read in one
//! place for everything that sizes itself by them: the environment record, the cache
//! flusher and the memory estimate's matmul workspace.

use std::collections::BTreeMap;

/// Last-level cache assumed when the system does not say (as large as server CPUs have).
pub const FALLBACK_LLC_BYTES: u64 = 256 << 20;

/// CPU 0's data, instruction and unified caches, bytes by name: `L{level}` and `d` for data,
/// `i` for instructions, nothing for unified (`L1d`, `L1i`, `L2`, `L3`), from Linux's sysfs.
/// Empty where the system does not say.
pub fn cache_bytes() -> BTreeMap<String, u64> {
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache") else {
        return BTreeMap::new();
    };
    let read = |path: &std::path::Path, name: &str| std::fs::read_to_string(path.join(name)).ok();
    dir.filter_map(|entry| {
        let path = entry.ok()?.path();
        let level = read(&path, "level")?;
        let kind = match read(&path, "type")?.trim() {
            "Data" => "d",
            "Instruction" => "i",
            _ => "",
        };
        let size = parse_cache_size(&read(&path, "size")?)?;
        Some((format!("L{}{kind}", level.trim()), size))
    })
    .collect()
}

/// Parses sysfs cache sizes such as `48K`, `2048K`, `266240K`, `32M`.
fn parse_cache_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "K" => Some(n << 10),
        "M" => Some(n << 20),
        "G" => Some(n << 30),
        _ => None,
    }
}

/// The size of CPU 0's largest data or unified cache; `None` where the system does not say.
pub fn largest_cache_bytes() -> Option<u64> {
    cache_bytes()
        .into_iter()
        .filter(|(name, _)| !name.ends_with('i'))
        .map(|(_, bytes)| bytes)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_cache_sizes_parse() {
        assert_eq!(parse_cache_size("48K\n"), Some(48 << 10));
        assert_eq!(parse_cache_size("266240K"), Some(266_240 << 10));
        assert_eq!(parse_cache_size("32M"), Some(32 << 20));
        assert_eq!(parse_cache_size("12"), None);
        assert_eq!(parse_cache_size("K"), None);
    }
}
