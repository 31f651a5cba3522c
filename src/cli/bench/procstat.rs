//! What the kernel says a process costs: CPU time and resident memory of the processes the
//! benchmark measures (the proxies, Postgres backends, the bench itself), and how busy the whole
//! machine was. Read from `/proc` on Linux; elsewhere every reading is absent and the report says
//! "n/a" rather than guessing.

use std::collections::HashMap;
use std::time::Duration;

/// CPU time a process has used so far (user + system, all threads).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    imp::cpu_time(pid)
}

/// How one thread has used the CPUs so far (`/proc/PID/task/TID/schedstat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadTime {
    /// On a CPU.
    pub running: Duration,
    /// Runnable, but waiting in a run queue for a CPU.
    pub waiting: Duration,
}

/// Every thread of a process, by thread id.
pub fn thread_times(pid: u32) -> Option<HashMap<u32, ThreadTime>> {
    imp::thread_times(pid)
}

/// The resident set now (`VmRSS`) and its high-water mark (`VmHWM`), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    imp::memory(pid)
}

/// The machine's CPU counters: time spent busy and in total, summed over every core.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    busy: Duration,
    total: Duration,
}

impl MachineCpu {
    pub fn now() -> Option<MachineCpu> {
        imp::machine()
    }

    /// The share of the machine's CPU capacity that was busy between `self` and `later`, 0..=1.
    pub fn busy_share_until(&self, later: &MachineCpu) -> f64 {
        let total = later.total.saturating_sub(self.total).as_secs_f64();
        if total == 0.0 { 0.0 } else { later.busy.saturating_sub(self.busy).as_secs_f64() / total }
    }
}

/// The machine's load averages (1, 5, 15 minutes), for the report's header.
pub fn load_average() -> Option<(f32, f32, f32)> {
    imp::load_average()
}

/// The CPU model, as `/proc/cpuinfo` names it.
pub fn cpu_model() -> Option<String> {
    imp::cpu_model()
}

/// The machine's memory, in bytes.
pub fn memory_total() -> Option<u64> {
    imp::memory_total()
}

/// The bench's own process id, for measuring what the in-process clients and upstream cost.
pub fn own_pid() -> u32 {
    std::process::id()
}

#[cfg(target_os = "linux")]
mod imp {
    use std::time::Duration;

    use procfs::process::Process;
    use procfs::{CpuInfo, Current, CurrentSI, KernelStats, LoadAverage, Meminfo};

    use super::{HashMap, MachineCpu, Memory, ThreadTime};

    fn ticks(ticks: u64) -> Duration {
        Duration::from_secs_f64(ticks as f64 / procfs::ticks_per_second() as f64)
    }

    pub fn cpu_time(pid: u32) -> Option<Duration> {
        let stat = Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
        Some(ticks(stat.utime + stat.stime))
    }

    pub fn thread_times(pid: u32) -> Option<HashMap<u32, ThreadTime>> {
        let tasks = Process::new(i32::try_from(pid).ok()?).ok()?.tasks().ok()?;
        let times = tasks.flatten().filter_map(|task| {
            let stat = task.schedstat().ok()?;
            let time = ThreadTime {
                running: Duration::from_nanos(stat.sum_exec_runtime),
                waiting: Duration::from_nanos(stat.run_delay),
            };
            Some((u32::try_from(task.tid).ok()?, time))
        });
        Some(times.collect())
    }

    pub fn memory(pid: u32) -> Option<Memory> {
        let status = Process::new(i32::try_from(pid).ok()?).ok()?.status().ok()?;
        // The kernel reports kB.
        Some(Memory { rss: status.vmrss? * 1024, peak: status.vmhwm? * 1024 })
    }

    pub fn machine() -> Option<MachineCpu> {
        let t = KernelStats::current().ok()?.total;
        let busy = t.user
            + t.nice
            + t.system
            + t.irq.unwrap_or(0)
            + t.softirq.unwrap_or(0)
            + t.steal.unwrap_or(0);
        let total = busy + t.idle + t.iowait.unwrap_or(0);
        Some(MachineCpu { busy: ticks(busy), total: ticks(total) })
    }

    pub fn load_average() -> Option<(f32, f32, f32)> {
        let load = LoadAverage::current().ok()?;
        Some((load.one, load.five, load.fifteen))
    }

    pub fn cpu_model() -> Option<String> {
        CpuInfo::current().ok()?.model_name(0).map(str::to_owned)
    }

    pub fn memory_total() -> Option<u64> {
        Some(Meminfo::current().ok()?.mem_total)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::time::Duration;

    use super::{HashMap, MachineCpu, Memory, ThreadTime};

    pub fn cpu_time(_pid: u32) -> Option<Duration> {
        None
    }

    pub fn thread_times(_pid: u32) -> Option<HashMap<u32, ThreadTime>> {
        None
    }

    pub fn memory(_pid: u32) -> Option<Memory> {
        None
    }

    pub fn machine() -> Option<MachineCpu> {
        None
    }

    pub fn load_average() -> Option<(f32, f32, f32)> {
        None
    }

    pub fn cpu_model() -> Option<String> {
        None
    }

    pub fn memory_total() -> Option<u64> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = own_pid();
        let memory = memory(pid).expect("own /proc status");
        assert!(memory.rss > 0 && memory.peak >= memory.rss, "{memory:?}");
        assert!(cpu_time(pid).is_some());
        let threads = thread_times(pid).expect("own /proc tasks");
        assert!(threads.contains_key(&pid), "the main thread's id is the process's: {threads:?}");
        assert!(threads.values().any(|t| !t.running.is_zero()), "{threads:?}");
        let (before, after) = (MachineCpu::now().expect("stat"), MachineCpu::now().expect("stat"));
        assert!((0.0..=1.0).contains(&before.busy_share_until(&after)));
    }

    #[test]
    fn a_process_that_does_not_exist_has_no_readings() {
        // Above the kernel's pid_max limit (4194304), so never a live process.
        assert_eq!(cpu_time(u32::MAX / 2), None);
        assert_eq!(memory(u32::MAX / 2), None);
        assert_eq!(thread_times(u32::MAX / 2), None);
    }
}
