//! Memory of the processes under load: VmRSS and VmHWM from
//! `/proc/PID/status`, the peak VmRSS sampled during the run, and Redis's
//! own `INFO memory`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// How often the resident set of each watched process is sampled.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// A process to watch, named for the output (`seckill`, `redis`, `tansu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamedPid {
    pub(crate) name: String,
    pub(crate) pid: u32,
}

/// Parses `NAME=PID` (the `--pid` flag).
pub(crate) fn parse_named_pid(s: &str) -> Result<NamedPid, String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=PID (e.g. seckill=1234)"))?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{name:?} in {s:?} is not a name: use letters, digits, -, _ or ."
        ));
    }
    let pid = pid
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{pid:?} in {s:?} is not a process id"))?;
    Ok(NamedPid {
        name: name.to_owned(),
        pid,
    })
}

/// What `/proc/PID/status` says about a process's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProcMemory {
    /// The `Name:` line (the command, at most 15 characters).
    pub(super) command: String,
    /// Resident set now, KiB.
    pub(super) vm_rss_kib: u64,
    /// Highest resident set since the process started, KiB.
    pub(super) vm_hwm_kib: u64,
}

/// Reads `Name`, `VmRSS` and `VmHWM` out of the text of a
/// `/proc/PID/status` file (fields `Key:<tab>value kB`).
pub(super) fn parse_status(text: &str) -> Result<ProcMemory, String> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
    };
    let kib = |key: &str| -> Result<u64, String> {
        let v = field(key).ok_or_else(|| {
            format!("no {key} line (a kernel thread, or not a /proc/PID/status text)")
        })?;
        let mut parts = v.split_whitespace();
        let n = parts
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("{key} is {v:?}, not a number of kB"))?;
        match parts.next() {
            Some("kB") | None => Ok(n),
            Some(unit) => Err(format!("{key} is in {unit:?}, not kB")),
        }
    };
    Ok(ProcMemory {
        command: field("Name").unwrap_or("").to_owned(),
        vm_rss_kib: kib("VmRSS")?,
        vm_hwm_kib: kib("VmHWM")?,
    })
}

/// The memory of process `pid` now.
pub(super) fn read_status(pid: u32) -> anyhow::Result<ProcMemory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path} (is process {pid} running on this host?)"))?;
    parse_status(&text).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

/// The processes `scripts/run` wrote pid files for in `dir` (`NAME.pid`,
/// e.g. seckill.pid, redis.pid, tansu.pid), sorted by name. A file whose
/// process is gone, or whose process's command does not start with NAME
/// (a stale file, its pid reused), is skipped with a note on stderr.
pub(super) fn pids_from_dir(dir: &Path) -> Vec<NamedPid> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pid"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let Ok(named) = parse_named_pid(&format!("{name}={}", text.trim())) else {
            eprintln!("bench: {} does not hold a pid; skipped", path.display());
            continue;
        };
        match read_status(named.pid) {
            Ok(m) if m.command.starts_with(name) => found.push(named),
            Ok(m) => eprintln!(
                "bench: {} names pid {}, which runs {:?}, not {name}: a stale file; skipped",
                path.display(),
                named.pid,
                m.command
            ),
            Err(e) => eprintln!("bench: {}: {e:#}; skipped", path.display()),
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Samples the resident set of `pids` every [`SAMPLE_EVERY`] until `stop`
/// is cancelled; returns the highest seen per pid (KiB). A process that
/// cannot be read at a sample is left out of that sample.
pub(super) fn sample_peaks(
    pids: Vec<u32>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<BTreeMap<u32, u64>> {
    tokio::spawn(async move {
        let mut peaks = BTreeMap::new();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            for pid in &pids {
                if let Ok(m) = read_status(*pid) {
                    let peak = peaks.entry(*pid).or_insert(0);
                    *peak = (*peak).max(m.vm_rss_kib);
                }
            }
        }
        peaks
    })
}

/// The numeric fields of a Redis `INFO` answer (`key:value` lines).
pub(super) fn parse_info(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            Some((k.to_owned(), v.trim().parse::<u64>().ok()?))
        })
        .collect()
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// The `memory_mib` object: per watched process its VmRSS and VmHWM at
/// the end of the load and the peak VmRSS sampled during it, plus Redis's
/// `used_memory_rss` and `used_memory_peak` (MiB, one decimal).
pub(super) async fn memory_json(
    pids: &[NamedPid],
    peaks: &BTreeMap<u32, u64>,
    redis: &mut redis::aio::ConnectionManager,
) -> anyhow::Result<Value> {
    let mut processes = serde_json::Map::new();
    for p in pids {
        let entry = match read_status(p.pid) {
            Ok(m) => json!({
                "pid": p.pid,
                "command": m.command,
                "vm_rss": mib(m.vm_rss_kib),
                "vm_hwm": mib(m.vm_hwm_kib),
                "peak_rss_sampled": peaks.get(&p.pid).map(|k| mib(*k)),
            }),
            Err(e) => json!({ "pid": p.pid, "error": format!("{e:#}") }),
        };
        processes.insert(p.name.clone(), entry);
    }
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(redis)
        .await
        .context("INFO memory on the bench's Redis")?;
    let info = parse_info(&info);
    let Some(rss) = info.get("used_memory_rss") else {
        bail!("Redis's INFO memory has no used_memory_rss");
    };
    Ok(json!({
        "processes": processes,
        "redis_used_memory_rss": mib(rss / 1024),
        "redis_used_memory_peak": info.get("used_memory_peak").map(|b| mib(b / 1024)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tseckill\nUmask:\t0022\nState:\tS (sleeping)\n\
        Tgid:\t4242\nPid:\t4242\nVmPeak:\t 1234567 kB\nVmSize:\t 1200000 kB\n\
        VmLck:\t       0 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n\
        RssAnon:\t   90000 kB\nThreads:\t12\n";

    #[test]
    fn the_status_parser_reads_rss_and_hwm_in_kib() {
        let m = parse_status(STATUS).expect("the sample parses");
        assert_eq!(
            m,
            ProcMemory {
                command: "seckill".into(),
                vm_rss_kib: 102_400,
                vm_hwm_kib: 204_800
            }
        );
        assert_eq!(mib(m.vm_rss_kib), 100.0);
        assert_eq!(mib(m.vm_hwm_kib), 200.0);
    }

    #[test]
    fn the_status_parser_says_what_is_missing_or_malformed() {
        // A kernel thread has no Vm* lines.
        let kthread = "Name:\tkworker/0:1\nState:\tI (idle)\nPid:\t12\n";
        assert!(parse_status(kthread)
            .expect_err("refused")
            .contains("no VmRSS"));
        let bad = STATUS.replace("102400 kB", "lots kB");
        assert!(parse_status(&bad)
            .expect_err("refused")
            .contains("not a number"));
        let unit = STATUS.replace("204800 kB", "200 MB");
        assert!(parse_status(&unit).expect_err("refused").contains("not kB"));
        // VmRSSx is not VmRSS.
        let prefix = STATUS.replace("VmRSS:", "VmRSSx:");
        assert!(parse_status(&prefix).is_err());
    }

    #[test]
    fn the_status_of_this_process_is_readable() {
        let me = read_status(std::process::id()).expect("our own status");
        assert!(
            me.vm_rss_kib > 0 && me.vm_hwm_kib >= me.vm_rss_kib,
            "{me:?}"
        );
    }

    #[test]
    fn named_pids_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_named_pid("redis=77").expect("a valid NAME=PID"),
            NamedPid {
                name: "redis".into(),
                pid: 77
            }
        );
        assert!(parse_named_pid("77")
            .expect_err("refused")
            .contains("NAME=PID"));
        assert!(parse_named_pid("redis=")
            .expect_err("refused")
            .contains("process id"));
        assert!(parse_named_pid("redis=0")
            .expect_err("refused")
            .contains("process id"));
        assert!(parse_named_pid("redis=-3").is_err());
        assert!(parse_named_pid("=3")
            .expect_err("refused")
            .contains("not a name"));
        assert!(parse_named_pid("a b=3")
            .expect_err("refused")
            .contains("not a name"));
    }

    #[test]
    fn pid_files_of_live_matching_processes_are_read_and_stale_ones_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let me = std::process::id();
        let command = read_status(me).expect("our own status").command;
        // This test binary's own command, as if scripts/run had started it.
        let name: String = command.chars().take(4).collect();
        std::fs::write(dir.path().join(format!("{name}.pid")), format!("{me}\n"))
            .expect("write a pid file");
        // The same live pid under a name it does not run: a stale file.
        std::fs::write(dir.path().join("tansu.pid"), me.to_string()).expect("write a pid file");
        std::fs::write(dir.path().join("junk.pid"), "not a pid").expect("write a pid file");
        std::fs::write(dir.path().join("notes.txt"), me.to_string()).expect("write a pid file");
        assert_eq!(pids_from_dir(dir.path()), vec![NamedPid { name, pid: me }]);
        assert!(pids_from_dir(&dir.path().join("absent")).is_empty());
    }

    #[test]
    fn info_fields_are_read_as_numbers() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_rss:2097152\r\n\
                    used_memory_rss_human:2.00M\r\nmaxmemory_policy:noeviction\r\n";
        let f = parse_info(info);
        assert_eq!(f.get("used_memory_rss"), Some(&2_097_152));
        assert_eq!(f.get("used_memory"), Some(&1_048_576));
        assert!(!f.contains_key("used_memory_rss_human"));
        assert!(!f.contains_key("maxmemory_policy"));
    }
}
