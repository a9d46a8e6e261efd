//! The simulator's own checks, each shown to catch what it exists for:
//! a nondeterministic scenario is flagged, a sweep whose faults never fire
//! fails, a panicking node becomes a reported violation, and replaying a
//! case reproduces the same trace hash; and the one request-with-retry
//! helper gets through a peer that drops and confuses its answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringfence::env::retry::Retry;
use ringfence::env::Env;
use ringfence::history::{History, Violation};
use ringfence_sim::plan::{DiskLoss, Fault, FaultKind, FaultPlan, Swarm};
use ringfence_sim::runner::Case;
use ringfence_sim::runner::RunOptions;
use ringfence_sim::scenario::{abort_run, Client, Params, Scenario, Spec, Workload};
use ringfence_sim::scenarios::{self, counter::Counter};
use ringfence_sim::sweep::{self, run_isolated, SweepPlan};
use ringfence_sim::SimEnv;

/// The spec of a one-client test scenario: no planted bugs, no aiming, a
/// liveness bound of a second.
const fn test_spec(name: &'static str, about: &'static str, servers: u32, ops: u32, fault_window_ms: u64) -> Spec {
    Spec {
        name,
        about,
        bugs: &[],
        servers,
        min_servers: servers,
        workload: Workload { clients: 1, ops },
        fault_window: Duration::from_millis(fault_window_ms),
        liveness_bound: Duration::from_secs(1),
        default_seeds: 200,
        aiming: None,
        situations: &[],
    }
}

/// Leaks state between runs through a global: the kind of bug the
/// determinism check exists to catch.
static LEAK: AtomicU64 = AtomicU64::new(0);

struct Leaky;

impl Scenario for Leaky {
    type Op = u64;
    const SPEC: Spec = test_spec("leaky", "test: behaviour depends on a global counter", 1, 3, 100);

    fn new(_: &Params) -> Self {
        Leaky
    }
    async fn server(self: Arc<Self>, env: SimEnv) {
        std::future::pending::<()>().await;
        drop(env);
    }
    async fn client(self: Arc<Self>, env: SimEnv, mut client: Client<u64>) {
        while client.next_op() {
            let n = LEAK.fetch_add(1, Ordering::Relaxed);
            client.invoke(n);
            env.sleep(Duration::from_millis(n % 7 + 1)).await;
            client.ok(n);
        }
    }
    async fn probe(self: Arc<Self>, _env: SimEnv, _client: Client<u64>) {}
    fn check(&self, _: &History<u64>) -> Vec<Violation> {
        Vec::new()
    }
}

#[test]
fn determinism_check_flags_a_scenario_that_leaks_state_between_runs() {
    let scenario = scenarios::erase::<Leaky>();
    let plan = SweepPlan {
        groups: vec![(scenario, sweep::default_cases(scenario, Some(0..4), None))],
        jobs: 1,
        determinism_every: 1,
        progress: false,
        stop_at_first_failure: false,
    };
    let summary = sweep::sweep(&plan).remove(0);
    assert_eq!(
        summary.nondeterministic.len(),
        4,
        "{}",
        sweep::table(std::slice::from_ref(&summary))
    );
    assert!(!summary.passed());
}

#[test]
fn a_sweep_whose_faults_never_fire_fails() {
    let scenario = scenarios::find("counter").unwrap();
    let mut cases = sweep::default_cases(scenario, Some(0..sweep::MIN_SEEDS_FOR_FAULT_COVERAGE), None);
    for case in &mut cases {
        case.plan = Some(FaultPlan::calm(1_000));
    }
    let plan = SweepPlan {
        groups: vec![(scenario, cases)],
        jobs: 2,
        determinism_every: 0,
        progress: false,
        stop_at_first_failure: false,
    };
    let summary = sweep::sweep(&plan).remove(0);
    assert!(summary.failures.is_empty());
    let required = scenario
        .fault_kinds()
        .into_iter()
        .filter(|k| !k.opportunistic())
        .count();
    assert_eq!(summary.never_fired.len(), required);
    assert!(!summary.passed());
}

struct Panicky;

impl Scenario for Panicky {
    type Op = ();
    const SPEC: Spec = test_spec("panicky", "test: a server asserts and dies", 1, 1, 100);

    fn new(_: &Params) -> Self {
        Panicky
    }
    async fn server(self: Arc<Self>, env: SimEnv) {
        env.sleep(Duration::from_millis(10)).await;
        if env.id() == 1 {
            panic!("invariant broken inside the server");
        }
        abort_run(Violation::new("two-leaders", "nodes 1 and 2 lead term 3", vec![]));
    }
    async fn client(self: Arc<Self>, _env: SimEnv, _client: Client<()>) {}
    async fn probe(self: Arc<Self>, _env: SimEnv, _client: Client<()>) {}
    fn check(&self, _: &History<()>) -> Vec<Violation> {
        Vec::new()
    }
}

#[test]
fn a_node_panic_is_reported_as_a_violation_with_its_message() {
    let scenario = scenarios::erase::<Panicky>();
    let case = scenarios::default_case(scenario, 1, None);
    let outcome = run_isolated(scenario, &case, RunOptions::default());
    assert_eq!(outcome.violations.len(), 1);
    assert_eq!(outcome.violations[0].invariant, "panic");
    assert!(
        outcome.violations[0]
            .detail
            .contains("invariant broken inside the server"),
        "{:?}",
        outcome.violations
    );
}

#[test]
fn replaying_a_failing_case_gives_the_same_failure_and_trace_hash() {
    let scenario = scenarios::erase::<Counter>();
    let cases = sweep::default_cases(scenario, Some(0..40), Some("ack-before-sync"));
    let failing = cases
        .iter()
        .map(|c| run_isolated(scenario, c, RunOptions::default()))
        .find(|o| o.failed())
        .expect("the planted bug fails within 40 seeds");
    let again = run_isolated(scenario, &failing.case, RunOptions { keep_trace: true });
    assert_eq!(again.trace_hash, failing.trace_hash);
    assert_eq!(again.violations, failing.violations);
    assert!(!again.events.is_empty(), "keep_trace records the events");
}

#[test]
fn abort_run_reports_the_named_violation() {
    let scenario = scenarios::erase::<Panicky>();
    let case = Case {
        servers: 2,
        ..scenarios::default_case(scenario, 1, None)
    };
    // Server 2 aborts at the same instant server 1 panics; which runs first
    // is up to the seed, so look for a seed where the abort wins.
    let named = (0..20)
        .map(|seed| run_isolated(scenario, &Case { seed, ..case.clone() }, RunOptions::default()))
        .find(|o| o.violations[0].invariant != "panic")
        .expect("some seed runs server 2 first");
    assert_eq!(named.violations[0].invariant, "two-leaders");
    assert_eq!(named.violations[0].detail, "nodes 1 and 2 lead term 3");
}

/// Server 1 sends `(its incarnation, seq, when)` to server 2 every 5 ms;
/// server 2 notes each arrival whose sender has since died or is paused,
/// or that took over [`LATE`] to arrive. Its
/// "invariant" is that none does, which a network that owns its copies
/// must be able to break.
struct Courier {
    late: std::sync::Mutex<Vec<&'static str>>,
}

impl Scenario for Courier {
    type Op = ();
    const SPEC: Spec = test_spec(
        "courier",
        "test: copies in flight outlive and outrun their sender",
        2,
        0,
        1_000,
    );

    fn new(_: &Params) -> Self {
        Courier {
            late: Default::default(),
        }
    }
    async fn server(self: Arc<Self>, env: SimEnv) {
        let incarnation = |env: &SimEnv, id| env.world().lock().node(id).incarnation;
        if env.id() == 1 {
            let me = incarnation(&env, 1);
            for seq in 0u64.. {
                let sent = ringfence_sim::world::elapsed().as_millis() as u64;
                let _ = env
                    .send(2, [me.to_le_bytes(), seq.to_le_bytes(), sent.to_le_bytes()].concat())
                    .await;
                env.sleep(Duration::from_millis(5)).await;
            }
        }
        loop {
            let (_, bytes) = env.recv().await;
            let sent_by = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let sent_at = Duration::from_millis(u64::from_le_bytes(bytes[16..24].try_into().unwrap()));
            let (down, paused, now) = {
                let mut w = env.world().lock();
                let sender = w.node(1);
                (sender.down, sender.paused, sender.incarnation)
            };
            let mut late = self.late.lock().unwrap();
            if down || now > sent_by {
                late.push("from-dead-incarnation");
            }
            if paused {
                late.push("from-paused-sender");
            }
            if ringfence_sim::world::elapsed() > sent_at + LATE {
                late.push("late-copy");
            }
        }
    }
    async fn client(self: Arc<Self>, _env: SimEnv, _client: Client<()>) {}
    async fn probe(self: Arc<Self>, _env: SimEnv, _client: Client<()>) {}
    fn check(&self, _: &History<()>) -> Vec<Violation> {
        let late = self.late.lock().unwrap();
        let mut kinds: Vec<&str> = late.clone();
        kinds.dedup();
        kinds.into_iter().map(|k| Violation::new(k, "", vec![])).collect()
    }
}

/// Longer than any copy takes but a late duplicate.
const LATE: Duration = Duration::from_millis(400);

/// Every copy is delayed up to 300 ms while `fault` hits server 1.
fn courier_case(fault: Fault) -> Case {
    let network = Fault::Network {
        at_ms: 0,
        for_ms: 1_000,
        loss: 0.0,
        duplicate: 0.0,
        delay: 1.0,
        max_delay_ms: 300,
        late_ms: 0,
    };
    courier_plan(network, fault)
}

fn courier_plan(network: Fault, fault: Fault) -> Case {
    let scenario = scenarios::erase::<Courier>();
    Case {
        plan: Some(FaultPlan {
            duration_ms: 1_000,
            swarm: Swarm {
                enabled: vec![],
                intensity: 1.0,
            },
            faults: vec![network, fault],
        }),
        ..scenarios::default_case(scenario, 7, None)
    }
}

#[test]
fn a_copy_sent_before_its_sender_crashed_is_delivered_after_it() {
    let scenario = scenarios::erase::<Courier>();
    let crash = Fault::Crash {
        at_ms: 300,
        node: 1,
        down_ms: 400,
        disk: DiskLoss::LoseUnsynced,
    };
    let case = courier_case(crash);
    let outcome = run_isolated(scenario, &case, RunOptions::default());
    let seen: Vec<&str> = outcome.violations.iter().map(|v| v.invariant.as_str()).collect();
    assert_eq!(seen, ["from-dead-incarnation"]);
    assert_eq!(outcome.fired.get(&FaultKind::Crash), Some(&1));
    assert_eq!(
        run_isolated(scenario, &case, RunOptions::default()).trace_hash,
        outcome.trace_hash
    );
}

#[test]
fn a_paused_senders_copies_keep_arriving() {
    let scenario = scenarios::erase::<Courier>();
    let pause = Fault::Pause {
        at_ms: 300,
        node: 1,
        for_ms: 400,
    };
    let outcome = run_isolated(scenario, &courier_case(pause), RunOptions::default());
    let seen: Vec<&str> = outcome.violations.iter().map(|v| v.invariant.as_str()).collect();
    assert_eq!(seen, ["from-paused-sender"]);
    assert_eq!(outcome.fired.get(&FaultKind::Pause), Some(&1));
}

#[test]
fn a_window_with_late_copies_delivers_some_messages_long_after_they_were_sent() {
    let scenario = scenarios::erase::<Courier>();
    // Second copies of duplicates, or delayed messages (up to 50 ms, well
    // under `LATE`, unless late copies are on).
    let network = |duplicate, delay, late_ms| Fault::Network {
        at_ms: 0,
        for_ms: 1_000,
        loss: 0.0,
        duplicate,
        delay,
        max_delay_ms: if delay > 0.0 { 50 } else { 0 },
        late_ms,
    };
    // A fault of no consequence here: it only fills the plan's slot.
    let pause = Fault::Pause {
        at_ms: 990,
        node: 2,
        for_ms: 1,
    };
    let seen = |network: Fault| {
        let outcome = run_isolated(scenario, &courier_plan(network, pause.clone()), RunOptions::default());
        outcome.violations.into_iter().map(|v| v.invariant).collect::<Vec<_>>()
    };
    // Copies arrive within the 1 s window, up to 900 ms late.
    for (duplicate, delay) in [(0.5, 0.0), (0.0, 1.0)] {
        assert_eq!(
            seen(network(duplicate, delay, 900)),
            ["late-copy"],
            "{duplicate} {delay}"
        );
        assert!(seen(network(duplicate, delay, 0)).is_empty(), "{duplicate} {delay}");
    }
}

/// Where each fault kind fires: the log scenario takes every kind but the
/// unsynced crash, which needs a protocol that sends before it syncs.
fn firing_ground(kind: FaultKind) -> (&'static str, Option<&'static str>) {
    match kind {
        FaultKind::UnsyncedCrash => ("counter", Some("ack-before-sync")),
        FaultKind::Partition
        | FaultKind::Crash
        | FaultKind::Pause
        | FaultKind::MessageLoss
        | FaultKind::MessageDuplicate
        | FaultKind::MessageDelay
        | FaultKind::ClockDrift
        | FaultKind::ClockJump
        | FaultKind::MomentCrash
        | FaultKind::Isolate
        | FaultKind::DiskTail
        | FaultKind::BitFlip
        | FaultKind::DiskError
        | FaultKind::LostWrite
        | FaultKind::Rogue
        | FaultKind::ClientCrash => ("log", None),
        FaultKind::DiskLost => ("log-members", None),
    }
}

/// Runs `cases` two at a time, each with the effect of its kind (if any)
/// switched off.
fn run_all(cases: &[(Case, Option<FaultKind>)]) -> Vec<ringfence_sim::runner::RunReport> {
    let mut out: Vec<_> = Vec::new();
    for pair in cases.chunks(2) {
        let outcomes: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = pair
                .iter()
                .map(|(case, off)| {
                    let scenario = scenarios::validate(case).unwrap();
                    s.spawn(move || sweep::run_isolated_with(scenario, case, RunOptions::default(), *off))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        out.extend(outcomes);
    }
    out
}

/// Fault accounting counts effects: every kind's count grows over a few
/// seeds, and stays at zero on those same seeds when only its effect is
/// switched off (its decisions still made), so a sweep's "every kind
/// fired" check would fail.
#[test]
fn every_fault_kind_is_counted_by_its_effect() {
    const SEEDS: std::ops::Range<u64> = 0..12;
    let grounds: std::collections::BTreeSet<_> = FaultKind::EVERY.into_iter().map(firing_ground).collect();
    let normal: Vec<(Case, Option<FaultKind>)> = grounds
        .iter()
        .flat_map(|&(name, bug)| {
            let scenario = scenarios::find(name).unwrap();
            sweep::default_cases(scenario, Some(SEEDS), bug)
        })
        .map(|case| (case, None))
        .collect();
    let normal = run_all(&normal);
    let mut disabled = Vec::new();
    for kind in FaultKind::EVERY {
        let (name, bug) = firing_ground(kind);
        let fired: Vec<&Case> = normal
            .iter()
            .filter(|o| o.case.scenario == name && o.case.bug.as_deref() == bug)
            .filter(|o| o.fired.get(&kind).is_some_and(|&n| n > 0))
            .map(|o| &o.case)
            .take(2)
            .collect();
        assert!(!fired.is_empty(), "{kind} had no effect on {name} seeds {SEEDS:?}");
        disabled.extend(fired.into_iter().map(|c| (c.clone(), Some(kind))));
    }
    for ((_, off), outcome) in disabled.iter().zip(run_all(&disabled)) {
        let off = off.expect("set above");
        assert_eq!(
            outcome.fired.get(&off).copied().unwrap_or(0),
            0,
            "{off} counted on seed {} of {} with its effect switched off",
            outcome.case.seed,
            outcome.case.scenario
        );
    }
}

/// One client whose operations (numbered by [`Client::claimed`]) each take
/// 100 ms; a probe that takes `PROBE_MS`; the client's last operation
/// finishes `DRAIN_MS` after the heal.
struct Patient;

const DRAIN_MS: u64 = 3_000;
const PROBE_MS: u64 = 2_000;

impl Scenario for Patient {
    type Op = u32;
    const SPEC: Spec = Spec {
        liveness_bound: Duration::from_millis(4_000),
        ..test_spec(
            "patient",
            "test: slow operations, a slow drain and a slow probe",
            1,
            100,
            1_000,
        )
    };

    fn new(_: &Params) -> Self {
        Patient
    }
    async fn server(self: Arc<Self>, env: SimEnv) {
        std::future::pending::<()>().await;
        drop(env);
    }
    async fn client(self: Arc<Self>, env: SimEnv, mut client: Client<u32>) {
        while client.next_op() {
            let n = client.claimed();
            client.invoke(n);
            env.sleep(Duration::from_millis(100)).await;
            client.ok(n);
        }
        client.invoke(0);
        env.sleep(Duration::from_millis(DRAIN_MS)).await;
        client.ok(0);
    }
    async fn probe(self: Arc<Self>, env: SimEnv, _client: Client<u32>) {
        env.sleep(Duration::from_millis(PROBE_MS)).await;
    }
    fn check(&self, _: &History<u32>) -> Vec<Violation> {
        Vec::new()
    }
}

fn patient_case(faults: Vec<Fault>) -> Case {
    let scenario = scenarios::erase::<Patient>();
    Case {
        plan: Some(FaultPlan {
            duration_ms: 1_000,
            swarm: Swarm {
                enabled: vec![],
                intensity: 1.0,
            },
            faults,
        }),
        ..scenarios::default_case(scenario, 3, None)
    }
}

/// The probe's bound runs from the heal, not from the end of the drain:
/// a 3 s drain and a 2 s probe miss a 4 s bound (timed from the drain's
/// end, as it used to be, they passed).
#[test]
fn liveness_is_timed_from_the_heal() {
    let outcome = run_isolated(
        scenarios::erase::<Patient>(),
        &patient_case(vec![]),
        RunOptions::default(),
    );
    assert_eq!(outcome.violations.len(), 1, "{:?}", outcome.violations);
    assert_eq!(outcome.violations[0].invariant, "liveness");
    assert!(
        outcome.violations[0].detail.contains("probe"),
        "{:?}",
        outcome.violations
    );
}

/// A crashed client's operation in flight ends as `info` at the crash, and
/// the restarted client goes on with fresh operations from what is left of
/// the budget.
#[test]
fn a_client_crash_leaves_its_operation_indeterminate_and_the_workload_goes_on() {
    let crash = Fault::ClientCrash {
        at_ms: 250,
        node: 101,
        down_ms: 100,
    };
    let outcome = run_isolated(
        scenarios::erase::<Patient>(),
        &patient_case(vec![crash]),
        RunOptions { keep_trace: true },
    );
    assert_eq!(outcome.fired.get(&FaultKind::ClientCrash), Some(&1));
    let events: Vec<ringfence::history::Event<u32>> = outcome
        .history
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    use ringfence::history::EventKind::{Info, Invoke};
    let infos: Vec<_> = events.iter().filter(|e| e.kind == Info).collect();
    assert_eq!(infos.len(), 1, "{events:?}");
    let (crashed, at) = (infos[0].op, infos[0].time_ns);
    assert!(
        (250_000_000..251_000_000).contains(&at),
        "closed at the crash, not {at}"
    );
    let invoked: Vec<u32> = events.iter().filter(|e| e.kind == Invoke).map(|e| e.op).collect();
    let after: Vec<u32> = events
        .iter()
        .filter(|e| e.kind == Invoke && e.time_ns > at)
        .map(|e| e.op)
        .collect();
    assert!(after.len() > 3, "the restarted client works on: {events:?}");
    assert!(after.iter().filter(|&&n| n != 0).all(|&n| n > crashed), "{invoked:?}");
}

/// Server 1 drops every odd-numbered copy it receives and answers an even
/// one with a stale reply first, then the real one: the lossy, confused
/// peer that [`Retry`] exists to get through. The client asks twice, once
/// with a second attempt to spare and once without.
struct Stubborn {
    copies: AtomicU64,
    answers: std::sync::Mutex<Vec<Option<u8>>>,
}

impl Scenario for Stubborn {
    type Op = ();
    const SPEC: Spec = test_spec(
        "stubborn",
        "test: an answer comes only to a resent request, after a stale one",
        1,
        1,
        100,
    );

    fn new(_: &Params) -> Self {
        Stubborn {
            copies: AtomicU64::new(0),
            answers: Default::default(),
        }
    }
    async fn server(self: Arc<Self>, env: SimEnv) {
        loop {
            let (from, request) = env.recv().await;
            if self.copies.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                continue;
            }
            let _ = env.send(from, vec![request[0].wrapping_add(100)]).await;
            let _ = env.send(from, request).await;
        }
    }
    async fn client(self: Arc<Self>, env: SimEnv, _client: Client<()>) {
        let ask = |id: u8, attempts| {
            let retry = Retry {
                attempts,
                wait: Duration::from_millis(100),
            };
            let env = env.clone();
            async move {
                retry
                    .call(&env, 1, &[id], |from, reply| {
                        (from == 1 && reply == [id]).then_some(reply[0])
                    })
                    .await
            }
        };
        let patient = ask(7, 2).await;
        let hasty = ask(9, 1).await;
        self.answers.lock().unwrap().extend([patient, hasty]);
    }
    async fn probe(self: Arc<Self>, _env: SimEnv, _client: Client<()>) {}
    fn check(&self, _: &History<()>) -> Vec<Violation> {
        let answers = self.answers.lock().unwrap().clone();
        let copies = self.copies.load(Ordering::Relaxed);
        if answers == [Some(7), None] && copies == 3 {
            return Vec::new();
        }
        let detail = format!("answers {answers:?} after {copies} copies");
        vec![Violation::new("retry", detail, vec![])]
    }
}

/// The one request-with-retry helper resends an unanswered request, skips
/// a stale reply, and reports an unknown outcome once its attempts run out.
#[test]
fn retry_resends_until_answered_and_skips_stale_replies() {
    let scenario = scenarios::erase::<Stubborn>();
    let case = Case {
        plan: Some(FaultPlan::calm(100)),
        ..scenarios::default_case(scenario, 3, None)
    };
    let outcome = run_isolated(scenario, &case, RunOptions::default());
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
}
