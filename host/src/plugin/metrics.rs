//! Per-plugin call metrics in the Prometheus text format: calls by outcome (`ok` or the named
//! error code) and a latency histogram, labelled by plugin, version and hook. One registry per
//! process, as Prometheus clients keep it; `/metrics` renders it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use super::PluginRef;
use super::warm::Reuse;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25,
];

#[derive(Default)]
struct Series {
    outcomes: BTreeMap<&'static str, u64>,
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// By plugin name, then each of its versions and hooks (a name has few): a call's look-up
/// borrows the name and compares the version, and allocates only for a series' first call.
type Registry = BTreeMap<String, Vec<(semver::Version, &'static str, Series)>>;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

/// Crash-loop trips per (plugin, version).
static TRIPS: LazyLock<Mutex<BTreeMap<(String, String), u64>>> = LazyLock::new(Mutex::default);

/// Calls that found every instance slot busy and waited, and their waits in all.
static SLOT_WAITS: AtomicU64 = AtomicU64::new(0);
static SLOT_WAIT_NANOS: AtomicU64 = AtomicU64::new(0);

/// Records that a call waited `waited` for an instance slot (whether one came or not).
pub(crate) fn record_slot_wait(waited: Duration) {
    SLOT_WAITS.fetch_add(1, Ordering::Relaxed);
    let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
    SLOT_WAIT_NANOS.fetch_add(nanos, Ordering::Relaxed);
}

/// Instances made for calls (none for a call an idle instance served).
static INSTANTIATIONS: AtomicU64 = AtomicU64::new(0);
/// What became of the instance of each call that answered, by [`Reuse`].
static FATES: [AtomicU64; Reuse::ALL.len()] = [const { AtomicU64::new(0) }; Reuse::ALL.len()];

/// Idle instances dropped to make room for another plugin's.
static EVICTIONS: AtomicU64 = AtomicU64::new(0);

/// Records that an idle instance was dropped to make room for another.
pub(crate) fn record_eviction() {
    EVICTIONS.fetch_add(1, Ordering::Relaxed);
}

/// Records that a call needed a new instance.
pub(crate) fn record_instantiation() {
    INSTANTIATIONS.fetch_add(1, Ordering::Relaxed);
}

/// Records what became of the instance of a call that answered.
pub(crate) fn record_instance(fate: Reuse) {
    FATES[fate as usize].fetch_add(1, Ordering::Relaxed);
}

/// One unlabelled series: its help and type lines, then its value.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// One runtime's instance slots as gauges (how many there are, how many no call holds, how
/// many instances are idle), and the host's instantiations and instance fates as counters.
pub fn render_slots(total: u32, free: usize, idle: usize) -> String {
    let mut out = String::new();
    single(
        &mut out,
        "cartridge_plugin_instance_slots",
        "gauge",
        "Instance slots of the plugin pool (--max-instances).",
        total,
    );
    single(
        &mut out,
        "cartridge_plugin_instance_slots_free",
        "gauge",
        "Instance slots no plugin call holds.",
        free,
    );
    single(
        &mut out,
        "cartridge_plugin_instances_idle",
        "gauge",
        "Plugin instances kept between calls.",
        idle,
    );
    single(
        &mut out,
        "cartridge_plugin_instantiations_total",
        "counter",
        "Plugin instances made for calls (an idle instance serves a call without one).",
        INSTANTIATIONS.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "cartridge_plugin_instances_evicted_total",
        "counter",
        "Idle plugin instances dropped to make room for another plugin's (the host keeps 64).",
        EVICTIONS.load(Ordering::Relaxed),
    );
    out.push_str("# HELP cartridge_plugin_instance_fates_total What became of the instance after a call that answered: kept for the next call, or why not.\n");
    out.push_str("# TYPE cartridge_plugin_instance_fates_total counter\n");
    for fate in Reuse::ALL {
        let _ = writeln!(
            out,
            "cartridge_plugin_instance_fates_total{{fate=\"{}\"}} {}",
            fate.as_str(),
            FATES[fate as usize].load(Ordering::Relaxed)
        );
    }
    out
}

/// Records that the crash-loop breaker switched `plugin` off.
pub(crate) fn record_trip(plugin: &PluginRef) {
    if let Ok(mut trips) = TRIPS.lock() {
        *trips
            .entry((plugin.name.clone(), plugin.version.to_string()))
            .or_default() += 1;
    }
}

/// Records one call of `plugin` that ended in `outcome` after `duration`.
pub(crate) fn record(plugin: &PluginRef, outcome: &'static str, duration: Duration) {
    let Ok(mut registry) = REGISTRY.lock() else {
        return;
    };
    let hook = plugin.hook.as_str();
    if !registry.contains_key(plugin.name.as_str()) {
        registry.insert(plugin.name.clone(), Vec::new());
    }
    let Some(all) = registry.get_mut(plugin.name.as_str()) else {
        return;
    };
    let at = match all
        .iter()
        .position(|(version, h, _)| *h == hook && *version == plugin.version)
    {
        Some(at) => at,
        None => {
            all.push((plugin.version.clone(), hook, Series::default()));
            all.len() - 1
        }
    };
    let series = &mut all[at].2;
    *series.outcomes.entry(outcome).or_default() += 1;
    let secs = duration.as_secs_f64();
    for (bucket, le) in series.buckets.iter_mut().zip(BUCKETS) {
        if secs <= le {
            *bucket += 1;
        }
    }
    series.sum += secs;
    series.count += 1;
}

/// The registry in the Prometheus text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    let Ok(registry) = REGISTRY.lock() else {
        return out;
    };
    // By plugin, version (as written) and hook, as the series have always been listed.
    let mut series: Vec<(&str, String, &str, &Series)> = registry
        .iter()
        .flat_map(|(plugin, all)| {
            all.iter()
                .map(move |(version, hook, s)| (plugin.as_str(), version.to_string(), *hook, s))
        })
        .collect();
    series.sort_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
    out.push_str("# HELP cartridge_plugin_calls_total Plugin hook calls by outcome (ok or the error code).\n");
    out.push_str("# TYPE cartridge_plugin_calls_total counter\n");
    for (plugin, version, hook, one) in &series {
        for (outcome, n) in &one.outcomes {
            let _ = writeln!(
                out,
                "cartridge_plugin_calls_total{{plugin=\"{plugin}\",version=\"{version}\",hook=\"{hook}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    out.push_str("# HELP cartridge_plugin_call_duration_seconds Plugin hook call latency, instantiation included.\n");
    out.push_str("# TYPE cartridge_plugin_call_duration_seconds histogram\n");
    for (plugin, version, hook, one) in &series {
        let labels = format!("plugin=\"{plugin}\",version=\"{version}\",hook=\"{hook}\"");
        for (n, le) in one.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "cartridge_plugin_call_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "cartridge_plugin_call_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            one.count
        );
        let _ = writeln!(
            out,
            "cartridge_plugin_call_duration_seconds_sum{{{labels}}} {}",
            one.sum
        );
        let _ = writeln!(
            out,
            "cartridge_plugin_call_duration_seconds_count{{{labels}}} {}",
            one.count
        );
    }
    drop(series);
    drop(registry);
    out.push_str("# HELP cartridge_plugin_crash_loop_trips_total Plugins switched off by the crash-loop breaker.\n");
    out.push_str("# TYPE cartridge_plugin_crash_loop_trips_total counter\n");
    if let Ok(trips) = TRIPS.lock() {
        for ((plugin, version), n) in trips.iter() {
            let _ = writeln!(
                out,
                "cartridge_plugin_crash_loop_trips_total{{plugin=\"{plugin}\",version=\"{version}\"}} {n}"
            );
        }
    }
    single(
        &mut out,
        "cartridge_plugin_slot_waits_total",
        "counter",
        "Plugin calls that found every instance slot busy and waited for one.",
        SLOT_WAITS.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "cartridge_plugin_slot_wait_seconds_total",
        "counter",
        "Time plugin calls spent waiting for an instance slot.",
        SLOT_WAIT_NANOS.load(Ordering::Relaxed) as f64 / 1e9,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::HookKind;

    /// Each version and hook of a plugin counts its own calls, by outcome, and is listed in
    /// order of plugin, version and hook.
    #[test]
    fn calls_are_counted_per_version_hook_and_outcome() {
        // The registry is the process's: a name no other test uses.
        let of = |version: &str, hook| PluginRef {
            name: "metrics-test-plugin".into(),
            version: version.parse().expect("version"),
            hook,
        };
        let quick = Duration::from_micros(30);
        record(&of("1.10.0", HookKind::Pricing), "ok", quick);
        record(&of("1.2.0", HookKind::Pricing), "ok", quick);
        record(&of("1.2.0", HookKind::Pricing), "trap", quick);
        record(
            &of("1.2.0", HookKind::Pricing),
            "ok",
            Duration::from_millis(3),
        );
        record(&of("1.2.0", HookKind::Fraud), "ok", quick);
        let text = render();
        let calls: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("cartridge_plugin_calls_total{plugin=\"metrics-test-plugin\"")
            })
            .collect();
        let series = |version: &str, hook: &str, outcome: &str, n: u64| {
            format!(
                "cartridge_plugin_calls_total{{plugin=\"metrics-test-plugin\",version=\"{version}\",hook=\"{hook}\",outcome=\"{outcome}\"}} {n}"
            )
        };
        assert_eq!(
            calls,
            [
                series("1.10.0", "pricing", "ok", 1),
                series("1.2.0", "fraud", "ok", 1),
                series("1.2.0", "pricing", "ok", 2),
                series("1.2.0", "pricing", "trap", 1),
            ]
        );
        let labels = "plugin=\"metrics-test-plugin\",version=\"1.2.0\",hook=\"pricing\"";
        for line in [
            format!("cartridge_plugin_call_duration_seconds_bucket{{{labels},le=\"0.001\"}} 2"),
            format!("cartridge_plugin_call_duration_seconds_bucket{{{labels},le=\"0.005\"}} 3"),
            format!("cartridge_plugin_call_duration_seconds_count{{{labels}}} 3"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
