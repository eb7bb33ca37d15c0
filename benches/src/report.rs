//! Writing benchmark figures into docs/benchmarks.md: each bench owns a section between
//! `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers and replaces only that.

use std::path::{Path, PathBuf};

/// `docs/benchmarks.md` of this repository.
pub fn benchmarks_md() -> PathBuf {
    std::env::var_os("RAGD_BENCHMARKS_MD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md"))
}

/// Replaces (or appends) section `name` of the markdown file at `path` with `body`.
pub fn update_section(path: &Path, name: &str, body: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# ragd benchmarks\n".into());
    let (begin, end) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &old[..b], &old[e + end.len()..]),
        _ => format!("{}\n\n{section}\n", old.trim_end()),
    };
    std::fs::write(path, new)
}

/// One line describing this machine: CPU model, cores, memory.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let flags = cpuinfo.lines().find_map(|l| l.strip_prefix("flags")).unwrap_or_default();
    let simd: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"]
        .into_iter()
        .filter(|f| flags.contains(f))
        .collect();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .map(|kib: f64| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{model}, {cores} cores ({}), {mem_gib:.0} GiB", simd.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("ragd-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("b.md");
        std::fs::write(&p, "# t\n\nintro\n").expect("write");
        update_section(&p, "a", "one").expect("append");
        update_section(&p, "b", "two").expect("append");
        update_section(&p, "a", "uno").expect("replace");
        let s = std::fs::read_to_string(&p).expect("read");
        assert!(s.contains("intro") && s.contains("uno") && s.contains("two") && !s.contains("one"));
        assert!(s.find("uno") < s.find("two"), "a stays before b");
        std::fs::remove_dir_all(dir).ok();
    }
}
