//! Admission: which pending job runs next.
//!
//! Pending jobs are indexed per instance (priority, then FIFO) with a second ordered set of
//! each instance's head, so one admission decision looks at one head per instance, never at
//! every pending job: 10,000 jobs waiting on one capped instance cost the scan one entry.
//! The ladder, per head in priority order, with skip-ahead (a blocked head never stalls the
//! ones behind it):
//! 1. **lanes**: at most `lanes` jobs run;
//! 2. **exclusivity**: a job whose (instance, config) has no empirical profile runs alone
//!    (its first run is its measurement), and nothing is admitted beside it;
//! 3. **per-instance cap**: running jobs of an instance <= its concurrency (1 for a native
//!    worker, the pool size for a wasm capability);
//! 4. **resources**: a measured GPU peak is admitted against the reservation ledger (sum of
//!    running peaks + this one <= total x headroom) and live free VRAM; without GPU
//!    telemetry a GPU-profiled job runs alone. A measured RAM peak is admitted against live
//!    available memory.

use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::store::Peaks;
use crate::telemetry::Telemetry;

/// Priority (higher first), then submission order.
pub(crate) type Order = (Reverse<i64>, u64);

/// Pending jobs by instance, plus each instance's head in global order.
#[derive(Default)]
pub(crate) struct PendingIndex {
    by_instance: HashMap<String, BTreeMap<Order, String>>,
    heads: BTreeSet<(Order, String)>,
    len: usize,
}

impl PendingIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, instance: &str, order: Order, job_id: String) {
        let queue = self.by_instance.entry(instance.to_owned()).or_default();
        let old_head = queue.first_key_value().map(|(k, _)| *k);
        queue.insert(order, job_id);
        self.len += 1;
        if old_head.is_none_or(|h| order < h) {
            if let Some(h) = old_head {
                self.heads.remove(&(h, instance.to_owned()));
            }
            self.heads.insert((order, instance.to_owned()));
        }
    }

    /// Removes one pending job; its id.
    pub(crate) fn remove(&mut self, instance: &str, order: Order) -> Option<String> {
        let queue = self.by_instance.get_mut(instance)?;
        let was_head = queue.first_key_value().is_some_and(|(k, _)| *k == order);
        let id = queue.remove(&order)?;
        self.len -= 1;
        if was_head {
            self.heads.remove(&(order, instance.to_owned()));
            match queue.first_key_value() {
                Some((next, _)) => {
                    self.heads.insert((*next, instance.to_owned()));
                }
                None => {
                    self.by_instance.remove(instance);
                }
            }
        }
        Some(id)
    }

    /// Instance heads in priority order.
    pub(crate) fn heads(&self) -> impl Iterator<Item = &(Order, String)> {
        self.heads.iter()
    }

    /// The first `limit` pending jobs in priority order, each with its instance and how many
    /// jobs of that instance are ahead of it (for inspection; sorts).
    pub(crate) fn queued(&self, limit: usize) -> Vec<(&str, &str, usize)> {
        let mut all: Vec<(&Order, &str, &str, usize)> = self
            .by_instance
            .iter()
            .flat_map(|(instance, q)| {
                q.iter()
                    .enumerate()
                    .map(move |(ahead, (o, id))| (o, instance.as_str(), id.as_str(), ahead))
            })
            .collect();
        all.sort_by_key(|(o, ..)| **o);
        all.into_iter()
            .take(limit)
            .map(|(_, instance, id, ahead)| (id, instance, ahead))
            .collect()
    }

    /// Every pending job id in priority order (for inspection; sorts).
    pub(crate) fn all(&self) -> Vec<String> {
        let mut all: Vec<(&Order, &String)> =
            self.by_instance.values().flat_map(|q| q.iter()).collect();
        all.sort_by_key(|(o, _)| **o);
        all.into_iter().map(|(_, id)| id.clone()).collect()
    }
}

/// Live free resources admission checks measured peaks against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ResourceView {
    /// Available system memory, MB.
    pub memory_available_mb: Option<f64>,
    /// Total GPU memory, MB (none without GPU telemetry).
    pub gpu_total_mb: Option<f64>,
    /// Free GPU memory now, MB.
    pub gpu_free_mb: Option<f64>,
}

/// Where admission gets live resource figures. The default reads sysinfo and NVML
/// ([`SystemResources`]); an embedder may supply its own (a cluster agent's view, or a
/// fixed view in a test of the GPU rules on a machine without a GPU).
pub trait ResourceSource: Send + Sync {
    /// The current view; called under the queue's lock, so it must be cheap (cache).
    fn view(&self) -> ResourceView;
}

/// Live figures from [`Telemetry`], refreshed at most every `max_age`.
pub struct SystemResources {
    telemetry: Telemetry,
    max_age: Duration,
    cached: Mutex<Option<(Instant, ResourceView)>>,
}

impl SystemResources {
    /// Figures from `telemetry`, at most 250 ms old.
    pub fn new(telemetry: Telemetry) -> Self {
        SystemResources {
            telemetry,
            max_age: Duration::from_millis(250),
            cached: Mutex::new(None),
        }
    }
}

impl ResourceSource for SystemResources {
    fn view(&self) -> ResourceView {
        let mut cached = self.cached.lock();
        if let Some((at, view)) = *cached
            && at.elapsed() < self.max_age
        {
            return view;
        }
        let gpu = self.telemetry.gpu_status();
        let view = ResourceView {
            memory_available_mb: self.telemetry.system().map(|s| s.memory_available_mb),
            gpu_total_mb: gpu.total_memory_mb(),
            gpu_free_mb: gpu.free_memory_mb(),
        };
        *cached = Some((Instant::now(), view));
        view
    }
}

/// What the ladder needs to know about the running set.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) running: usize,
    pub(crate) by_instance: HashMap<String, usize>,
    /// A job without a profile runs: nothing else is admitted.
    pub(crate) exclusive: bool,
    /// Sum of the GPU peaks of running jobs, MB.
    pub(crate) gpu_reserved_mb: f64,
}

/// Why a head was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Blocked {
    Exclusive,
    InstanceCap(usize),
    Gpu(String),
    Memory(String),
}

impl Blocked {
    /// The verdict's kind and its words, for `instance`.
    pub(crate) fn explain(&self, instance: &str, running: usize) -> (&'static str, String) {
        match self {
            Blocked::Exclusive => (
                "first_run",
                format!(
                    "its first run on '{instance}' with this config is measured alone: it waits \
                     for the {running} running job(s) to finish"
                ),
            ),
            Blocked::InstanceCap(cap) => (
                "instance_cap",
                format!("'{instance}' already runs {cap} job(s), its concurrency cap"),
            ),
            Blocked::Gpu(why) => ("gpu", why.clone()),
            Blocked::Memory(why) => ("memory", why.clone()),
        }
    }
}

/// Why a pending job waits: the admission ladder's verdict on it now (the reason the
/// reference host leaves unexposed).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WaitReason {
    /// The job.
    pub job_id: String,
    /// Its instance.
    pub instance_id: String,
    /// `lanes`, `exclusive`, `first_run`, `first_run_ahead`, `instance_cap`, `gpu`,
    /// `memory`, `behind`, `closed` or `next` (admissible at the next dispatch).
    pub kind: &'static str,
    /// In words.
    pub message: String,
    /// Jobs of the same instance ahead of it.
    pub ahead: usize,
}

/// What admitting a job reserves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Grant {
    pub(crate) exclusive: bool,
    pub(crate) gpu_mb: f64,
}

/// The admission limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) lanes: usize,
    pub(crate) gpu_headroom: f64,
}

/// Decides one head: its instance's profile and cap against the ledger and live figures.
pub(crate) fn decide(
    ledger: &Ledger,
    limits: Limits,
    instance: &str,
    cap: usize,
    profile: Option<Peaks>,
    view: &mut dyn FnMut() -> ResourceView,
) -> Result<Grant, Blocked> {
    let Some(profile) = profile else {
        return if ledger.running == 0 {
            Ok(Grant {
                exclusive: true,
                gpu_mb: 0.0,
            })
        } else {
            Err(Blocked::Exclusive)
        };
    };
    let running_here = ledger.by_instance.get(instance).copied().unwrap_or(0);
    if running_here >= cap.max(1) {
        return Err(Blocked::InstanceCap(cap.max(1)));
    }
    // Nothing runs: whatever its peaks, it runs now, alone (its own idle worker may hold the
    // memory the live figures miss; a real shortage comes back as a resource error, which
    // evicts and retries).
    if ledger.running == 0 && (profile.gpu_mb > 0.0 || profile.ram_mb > 0.0) {
        let live = view();
        let fits_gpu = profile.gpu_mb <= 0.0
            || matches!((live.gpu_total_mb, live.gpu_free_mb), (Some(t), Some(f))
                if profile.gpu_mb <= t * limits.gpu_headroom && profile.gpu_mb <= f);
        let fits_ram = live.memory_available_mb.is_none_or(|a| profile.ram_mb <= a);
        if !(fits_gpu && fits_ram) {
            return Ok(Grant {
                exclusive: true,
                gpu_mb: profile.gpu_mb,
            });
        }
    }
    let gpu = profile.gpu_mb;
    let ram = profile.ram_mb;
    let live = if gpu > 0.0 || ram > 0.0 {
        Some(view())
    } else {
        None
    };
    let mut grant = Grant {
        exclusive: false,
        gpu_mb: 0.0,
    };
    if gpu > 0.0 {
        let live = live.unwrap_or_default();
        match (live.gpu_total_mb, live.gpu_free_mb) {
            (Some(total), Some(free)) => {
                let budget = total * limits.gpu_headroom;
                if ledger.gpu_reserved_mb + gpu > budget {
                    return Err(Blocked::Gpu(format!(
                        "GPU ledger: {:.0} MB reserved + {gpu:.0} MB > {budget:.0} MB ({:.0}% of {total:.0} MB)",
                        ledger.gpu_reserved_mb,
                        limits.gpu_headroom * 100.0
                    )));
                }
                if gpu > free {
                    return Err(Blocked::Gpu(format!(
                        "GPU: needs {gpu:.0} MB, {free:.0} MB free"
                    )));
                }
                grant.gpu_mb = gpu;
            }
            _ if ledger.running == 0 => {
                grant.exclusive = true;
                grant.gpu_mb = gpu;
            }
            _ => {
                return Err(Blocked::Gpu(
                    "GPU-profiled job without GPU telemetry runs alone".into(),
                ));
            }
        }
    }
    if ram > 0.0
        && let Some(available) = live.and_then(|v| v.memory_available_mb)
        && ram > available
    {
        return Err(Blocked::Memory(format!(
            "memory: needs {ram:.0} MB, {available:.0} MB available"
        )));
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(gpu: f64, ram: f64) -> Peaks {
        Peaks {
            gpu_mb: gpu,
            ram_mb: ram,
        }
    }

    const LIMITS: Limits = Limits {
        lanes: 4,
        gpu_headroom: 0.9,
    };

    fn gpu_view(total: f64, free: f64) -> impl FnMut() -> ResourceView {
        move || ResourceView {
            memory_available_mb: Some(1000.0),
            gpu_total_mb: Some(total),
            gpu_free_mb: Some(free),
        }
    }

    #[test]
    fn the_ladder() {
        let mut none = || ResourceView::default();
        let idle = Ledger::default();
        let busy = Ledger {
            running: 1,
            by_instance: HashMap::from([("i".to_owned(), 1)]),
            ..Ledger::default()
        };
        // Exclusivity: no profile runs alone.
        assert!(
            decide(&idle, LIMITS, "i", 1, None, &mut none)
                .unwrap()
                .exclusive
        );
        assert_eq!(
            decide(&busy, LIMITS, "j", 1, None, &mut none),
            Err(Blocked::Exclusive)
        );
        // Per-instance cap.
        let p = profile(0.0, 0.0);
        assert_eq!(
            decide(&busy, LIMITS, "i", 1, Some(p), &mut none),
            Err(Blocked::InstanceCap(1))
        );
        assert!(decide(&busy, LIMITS, "i", 2, Some(p), &mut none).is_ok());
        assert!(decide(&busy, LIMITS, "j", 1, Some(p), &mut none).is_ok());
        // GPU: ledger, then live free memory, then no telemetry.
        let g = profile(4000.0, 0.0);
        let reserved = Ledger {
            gpu_reserved_mb: 5000.0,
            ..Ledger::default()
        };
        assert!(
            matches!(decide(&reserved, LIMITS, "j", 1, Some(g), &mut gpu_view(9000.0, 9000.0)), Err(Blocked::Gpu(m)) if m.contains("ledger"))
        );
        assert_eq!(
            decide(
                &reserved,
                LIMITS,
                "j",
                1,
                Some(g),
                &mut gpu_view(12000.0, 9000.0)
            )
            .unwrap()
            .gpu_mb,
            4000.0
        );
        let other = Ledger {
            running: 1,
            by_instance: HashMap::from([("k".to_owned(), 1)]),
            ..Ledger::default()
        };
        assert!(
            matches!(decide(&other, LIMITS, "j", 1, Some(g), &mut gpu_view(12000.0, 3000.0)), Err(Blocked::Gpu(m)) if m.contains("3000 MB free"))
        );
        // Alone it runs whatever its peak (its own idle worker may hold what looks taken).
        assert!(
            decide(
                &idle,
                LIMITS,
                "j",
                1,
                Some(g),
                &mut gpu_view(12000.0, 3000.0)
            )
            .unwrap()
            .exclusive
        );
        assert!(
            decide(&idle, LIMITS, "j", 1, Some(g), &mut none)
                .unwrap()
                .exclusive
        );
        assert!(decide(&busy, LIMITS, "j", 1, Some(g), &mut none).is_err());
        // RAM against live available memory.
        let m = profile(0.0, 2000.0);
        assert!(matches!(
            decide(&other, LIMITS, "j", 1, Some(m), &mut gpu_view(0.0, 0.0)),
            Err(Blocked::Memory(_))
        ));
        assert!(
            decide(&idle, LIMITS, "j", 1, Some(m), &mut gpu_view(0.0, 0.0))
                .unwrap()
                .exclusive
        );
        assert!(
            decide(
                &idle,
                LIMITS,
                "j",
                1,
                Some(profile(0.0, 500.0)),
                &mut gpu_view(0.0, 0.0)
            )
            .is_ok()
        );
    }

    #[test]
    fn heads_follow_priority_then_fifo() {
        let mut p = PendingIndex::default();
        p.insert("a", (Reverse(0), 1), "a1".into());
        p.insert("a", (Reverse(0), 2), "a2".into());
        p.insert("b", (Reverse(5), 3), "b3".into());
        p.insert("a", (Reverse(9), 4), "a4".into());
        let heads: Vec<_> = p.heads().map(|(_, i)| i.clone()).collect();
        assert_eq!(heads, ["a", "b"]);
        assert_eq!(p.all(), ["a4", "b3", "a1", "a2"]);
        assert_eq!(p.remove("a", (Reverse(9), 4)).unwrap(), "a4");
        let heads: Vec<_> = p.heads().map(|(_, i)| i.clone()).collect();
        assert_eq!(heads, ["b", "a"]);
        p.remove("b", (Reverse(5), 3));
        assert_eq!(p.len(), 2);
        assert_eq!(p.heads().count(), 1);
    }

    /// One step of a generated sequence over the index.
    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            instance: u8,
            priority: i64,
        },
        /// Removes the `nth` (modulo the count) job still pending.
        Remove {
            nth: usize,
        },
    }

    fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
        use proptest::prelude::*;
        let op = prop_oneof![
            3 => (0u8..4, -2i64..3).prop_map(|(instance, priority)| Op::Insert { instance, priority }),
            2 => any::<usize>().prop_map(|nth| Op::Remove { nth }),
        ];
        proptest::collection::vec(op, 0..80)
    }

    proptest::proptest! {
        /// The index against a plain list of every pending job: after any sequence of
        /// inserts and removals, its length, its priority order and each instance's head
        /// are the model's.
        #[test]
        fn the_pending_index_agrees_with_a_plain_list(ops in ops()) {
            let mut index = PendingIndex::default();
            let mut model: Vec<(Order, String, String)> = Vec::new();
            for (seq, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert { instance, priority } => {
                        let order = (Reverse(priority), seq as u64);
                        let (instance, id) = (format!("i{instance}"), format!("j{seq}"));
                        index.insert(&instance, order, id.clone());
                        model.push((order, instance, id));
                    }
                    Op::Remove { nth } if !model.is_empty() => {
                        let (order, instance, id) = model.remove(nth % model.len());
                        proptest::prop_assert_eq!(index.remove(&instance, order), Some(id));
                    }
                    Op::Remove { .. } => {}
                }
                model.sort();
                proptest::prop_assert_eq!(index.len(), model.len());
                let ids: Vec<String> = model.iter().map(|(_, _, id)| id.clone()).collect();
                proptest::prop_assert_eq!(index.all(), ids);
                let mut heads: Vec<(Order, String)> = Vec::new();
                for (order, instance, _) in &model {
                    if !heads.iter().any(|(_, i)| i == instance) {
                        heads.push((*order, instance.clone()));
                    }
                }
                let got: Vec<(Order, String)> = index.heads().cloned().collect();
                proptest::prop_assert_eq!(got, heads);
            }
        }

        /// Whatever the ledger, profile and live figures, the ladder never admits past the
        /// lanes' owner (an exclusive run), past an instance's cap, or a GPU peak past the
        /// ledger's budget beside other running jobs; and an idle queue always admits.
        #[test]
        fn the_ladder_never_admits_past_its_limits(
            running in 0usize..4,
            here in 0usize..3,
            cap in 1usize..3,
            reserved in 0.0f64..12000.0,
            profile in proptest::option::of((0.0f64..6000.0, 0.0f64..4000.0)),
            live in (proptest::option::of(0.0f64..8000.0), proptest::option::of(1000.0f64..16000.0), 0.0f64..16000.0),
        ) {
            let here = here.min(running);
            let ledger = Ledger {
                running,
                by_instance: HashMap::from([("i".to_owned(), here)]),
                exclusive: false,
                gpu_reserved_mb: if running == 0 { 0.0 } else { reserved },
            };
            let (memory, total, free) = live;
            let mut view = || ResourceView {
                memory_available_mb: memory,
                gpu_total_mb: total,
                gpu_free_mb: total.map(|t| free.min(t)),
            };
            let peaks = profile.map(|(gpu_mb, ram_mb)| Peaks { gpu_mb, ram_mb });
            match decide(&ledger, LIMITS, "i", cap, peaks, &mut view) {
                Ok(grant) => {
                    proptest::prop_assert!(running == 0 || here < cap, "over the cap");
                    proptest::prop_assert!(running == 0 || peaks.is_some(), "an unprofiled job beside others");
                    if running > 0 && grant.gpu_mb > 0.0 {
                        let budget = total.unwrap_or(0.0) * LIMITS.gpu_headroom;
                        proptest::prop_assert!(ledger.gpu_reserved_mb + grant.gpu_mb <= budget + 1e-9);
                    }
                    proptest::prop_assert!(!grant.exclusive || running == 0, "exclusive beside others");
                }
                Err(_) => proptest::prop_assert!(running > 0, "an idle queue refused a job"),
            }
        }
    }
}
