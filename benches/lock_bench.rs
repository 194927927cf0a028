//! The lock manager against the database's own round trip, every figure beside a baseline
//! measured in the same run (the machines are shared and noisy, so only ratios mean much).
//!
//! ```text
//! scripts/with-mongo cargo bench --bench lock_bench            # table on stdout
//! BENCH_JSON=path.json scripts/with-mongo cargo bench --bench lock_bench
//! BENCH_ROWS=cross,fair scripts/with-mongo cargo bench --bench lock_bench  # some rows only:
//!     local, cross, election, metrics, requests, fleet, fair, throughput, memory (B and the
//!     uncontended rows always)
//! ```
//!
//! Rows: B (one raw findOneAndUpdate of the grant's shape on a collection with the lock
//! indexes, and beside it the same without indexes), uncontended Lock and Lock+Unlock, local hand-off
//! (8 waiters in one manager), cross-process hand-off (2 managers in 2 processes; told by a
//! change stream where the server has them, probing elsewhere), an election's hand-off (a leader
//! resigns; the other candidate, on a client of its own, is told `Elected`), the requests a manager sends
//! per second while it waits for a resource held by another process (every command, by name,
//! against the seed's fixed 250 ms polling), a fleet of 1, 5, 20 and 50 waiting managers (each
//! on a client of its own: what each sends per second while they wait, what they all send per
//! release as the resource goes through all of them, and the hand-off gaps), turns between two
//! processes contending for one
//! resource (the smaller process's share, the longest run of grants to one process while the
//! other waited, and grants/s against the same workload in one process), throughput on 1 and
//! 1,000 resources against raw findOneAndUpdate throughput, the seed's fixed 250 ms polling for
//! comparison, and resident memory per waiting Acquire. The cross-process rows start this
//! binary again as a child (`--child...`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::Addr;
use actix_mongo_lock::election::{Campaign, Deposed, Elected, Elector, Resign};
use actix_mongo_lock::{
    Acquire, Close, Lock, LockConfig, LockError, LockManager, Polling, Status, Unlock,
};
use mongodb::bson::{doc, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};

const DATABASE: &str = "actix_mongo_lock_bench";

fn uri() -> String {
    std::env::var("MONGODB_URI")
        .expect("MONGODB_URI is not set: run `scripts/with-mongo cargo bench --bench lock_bench`")
}

/// Commands sent, by name.
type Commands = Arc<Mutex<BTreeMap<String, u64>>>;

/// A client that counts, by name, every command it sends while `counting` is set, except the
/// handshakes and session clean-up the driver sends on its own (`hello`, `isMaster`,
/// `endSessions`).
async fn counting_client(commands: Commands, counting: Arc<AtomicBool>) -> Client {
    let mut options = ClientOptions::parse(uri())
        .await
        .expect("MONGODB_URI parses");
    options.command_event_handler = Some(EventHandler::callback(move |event| {
        if let CommandEvent::Started(started) = event {
            let name = started.command_name.as_str();
            let own = matches!(name, "hello" | "isMaster" | "ismaster" | "endSessions");
            if counting.load(Ordering::Relaxed) && !own {
                *commands.lock().unwrap().entry(name.to_owned()).or_insert(0) += 1;
            }
        }
    }));
    Client::with_options(options).expect("client options are valid")
}

fn family(name: &str) -> String {
    format!(
        "bench_{name}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Whether the run measures the rows of `group` (`BENCH_ROWS=fair,cross`, say; all by
/// default). The uncontended rows, which give B, always run.
fn wants(group: &str) -> bool {
    std::env::var("BENCH_ROWS")
        .map(|rows| rows.split(',').any(|row| row.trim() == group))
        .unwrap_or(true)
}

fn config(name: &str) -> LockConfig {
    LockConfig::new(family(name))
        .database(DATABASE)
        .ttl(Duration::from_secs(30))
}

async fn start(config: &LockConfig) -> Addr<LockManager> {
    start_with(Client::with_uri_str(uri()).await.expect("client"), config).await
}

async fn start_with(client: Client, config: &LockConfig) -> Addr<LockManager> {
    LockManager::with_client(client, config.clone())
        .await
        .expect("start a lock manager")
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let index = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One row of the table.
struct Row {
    name: String,
    value: f64,
    unit: &'static str,
    baseline: Option<(f64, &'static str)>,
    target: String,
    /// Commands by name, for the rows that count them.
    commands: BTreeMap<String, u64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.baseline.map(|(b, _)| self.value / b)
    }
}

#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn add(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        baseline: Option<(f64, &'static str)>,
        target: &str,
    ) {
        let row = Row {
            name: name.to_owned(),
            value,
            unit,
            baseline,
            target: target.to_owned(),
            commands: BTreeMap::new(),
        };
        eprintln!("  {:<58} {:>10.3} {}", row.name, row.value, row.unit);
        self.0.push(row);
    }

    /// Attaches the commands counted to the last row (in the JSON, and printed below the table).
    fn commands(&mut self, commands: BTreeMap<String, u64>) {
        eprintln!("    commands: {commands:?}");
        if let Some(row) = self.0.last_mut() {
            row.commands = commands;
        }
    }

    fn print(&self) {
        println!("\n| measure | value | baseline | ratio | target |");
        println!("|---|---|---|---|---|");
        for row in &self.0 {
            let baseline = row
                .baseline
                .map_or("".to_owned(), |(b, name)| format!("{b:.3} ({name})"));
            let ratio = row.ratio().map_or("".to_owned(), |r| format!("{r:.2}"));
            println!(
                "| {} | {:.3} {} | {} | {} | {} |",
                row.name, row.value, row.unit, baseline, ratio, row.target
            );
        }
        for row in self.0.iter().filter(|row| !row.commands.is_empty()) {
            println!("\n{}: commands {:?}", row.name, row.commands);
        }
    }

    fn json(&self) -> String {
        let rows: Vec<String> = self
            .0
            .iter()
            .map(|row| {
                let (baseline, ratio) = match (row.baseline, row.ratio()) {
                    (Some((b, name)), Some(r)) => (format!("{b}, \"baseline_name\": \"{name}\""), format!("{r}")),
                    _ => ("null".to_owned(), "null".to_owned()),
                };
                let commands = if row.commands.is_empty() {
                    String::new()
                } else {
                    let named: Vec<String> = row
                        .commands
                        .iter()
                        .map(|(name, count)| format!("\"{name}\": {count}"))
                        .collect();
                    format!(", \"commands\": {{{}}}", named.join(", "))
                };
                format!(
                    "  {{\"measure\": \"{}\", \"value\": {}, \"unit\": \"{}\", \"baseline\": {baseline}, \"ratio\": {ratio}, \"target\": \"{}\"{commands}}}",
                    row.name, row.value, row.unit, row.target
                )
            })
            .collect();
        format!("[\n{}\n]\n", rows.join(",\n"))
    }
}

/// One raw findOneAndUpdate of the grant's exact shape (the store's filter and update, with
/// the lock id branch matching, so it succeeds every time), straight through the driver.
async fn raw_grant(collection: &Collection<Document>, resource: &str) {
    let now = mongodb::bson::DateTime::now();
    let now_ms = now.timestamp_millis();
    let lock_id = format!("raw-{resource}");
    // The store's grant, line of waiting managers included: the same filter (free, expired or
    // our own lock id; and nobody else's turn) and the same update (the hold, the fence, the
    // turn handed to nobody, this manager out of the line).
    collection
        .find_one_and_update(
            doc! {
                "resource": resource,
                "shared.count": 0,
                "$and": [
                    { "$or": [
                        { "exclusive.acquired": false },
                        { "exclusive.expiresAt": { "$lt": now } },
                        { "exclusive.lockId": &lock_id },
                    ] },
                    { "$or": [
                        { "turn": { "$exists": false } },
                        { "turn.until": { "$lt": now_ms } },
                        { "turn.manager": "raw-bench" },
                        { "exclusive.lockId": &lock_id },
                    ] },
                ],
            },
            doc! {
                "$set": {
                    "exclusive": {
                        "lockId": &lock_id, "owner": "bench", "host": "bench", "comment": null,
                        "createdAt": now, "renewedAt": null, "expiresAt": now, "acquired": true,
                    },
                    "shared": { "count": 0, "locks": [] },
                    "turn": { "manager": "", "until": 0_i64 },
                },
                "$inc": { "fence": 1_i64 },
                "$pull": { "line": { "$in": ["raw-bench"] } },
            },
        )
        .upsert(true)
        .return_document(mongodb::options::ReturnDocument::After)
        .await
        .expect("raw findOneAndUpdate");
}

/// A raw collection for lock family `name`, with the indexes every lock collection has
/// (`resource` unique, `exclusive.lockId`, `exclusive.expiresAt`), so raw writes pay the same
/// index upkeep as the manager's. A manager started on the family creates them, as at any
/// start, and is closed at once. On SecantusDB that upkeep is about a third of B; on MongoDB it
/// is microseconds.
async fn indexed_collection(client: &Client, name: &str) -> Collection<Document> {
    let config = config(name);
    let manager = start_with(client.clone(), &config).await;
    manager.send(Close).await.expect("close the index maker");
    client
        .database(DATABASE)
        .collection::<Document>(&config.collection_name())
}

/// Raw findOneAndUpdate throughput of `tasks` concurrent tasks, each on `resources` documents.
async fn raw_throughput(
    collection: &Collection<Document>,
    tasks: usize,
    resources: usize,
    run: Duration,
) -> f64 {
    let done = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + run;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (collection, done) = (collection.clone(), Rc::clone(&done));
        handles.push(actix_rt::spawn(async move {
            let mut i = task;
            while Instant::now() < deadline {
                let resource = format!("raw-{}", i % resources);
                i += tasks;
                raw_grant(&collection, &resource).await;
                done.set(done.get() + 1);
            }
        }));
    }
    for handle in handles {
        handle.await.expect("raw task");
    }
    done.get() as f64 / run.as_secs_f64()
}

/// How long `request` took to be granted, and to be granted and unlocked.
async fn timed_lock(manager: &Addr<LockManager>, request: Lock) -> (Duration, Duration) {
    let started = Instant::now();
    let grant = manager
        .send(request)
        .await
        .unwrap()
        .expect("uncontended Lock");
    let locked = started.elapsed();
    manager
        .send(Unlock::new(grant.lock_id))
        .await
        .unwrap()
        .expect("Unlock");
    (locked, started.elapsed())
}

/// Medians of a raw grant (B, on a collection with the lock indexes), of the same grant on a
/// collection without indexes, of an uncontended Lock, of Lock+Unlock, and of an uncontended
/// shared Lock, each on a collection of one document.
async fn uncontended(
    manager: &Addr<LockManager>,
    raw: &Collection<Document>,
    bare: &Collection<Document>,
    samples: usize,
) -> (Duration, Duration, Duration, Duration, Duration) {
    let mut raws = Vec::with_capacity(samples);
    let mut bares = Vec::with_capacity(samples);
    let mut locks = Vec::with_capacity(samples);
    let mut pairs = Vec::with_capacity(samples);
    let mut shared = Vec::with_capacity(samples);
    // Interleaved with raw round trips, so both see the same moment of a noisy machine; the
    // warm-up creates both documents first.
    for i in 0..samples + 50 {
        let started = Instant::now();
        raw_grant(raw, "uncontended").await;
        let raw_took = started.elapsed();
        let started = Instant::now();
        raw_grant(bare, "uncontended").await;
        let bare_took = started.elapsed();
        let (locked, pair) = timed_lock(manager, Lock::new("u")).await;
        let (shared_locked, _) = timed_lock(manager, Lock::shared("s")).await;
        if i >= 50 {
            raws.push(raw_took);
            bares.push(bare_took);
            locks.push(locked);
            pairs.push(pair);
            shared.push(shared_locked);
        }
    }
    (
        percentile(&mut raws, 0.5),
        percentile(&mut bares, 0.5),
        percentile(&mut locks, 0.5),
        percentile(&mut pairs, 0.5),
        percentile(&mut shared, 0.5),
    )
}

/// Uncontended Lock+Unlock pairs, alternately with no metrics recorder and with one installed
/// (`metrics-util`'s debugging recorder, which keeps every value: heavier than an exporter's
/// aggregation); the medians of each.
async fn with_and_without_recorder(
    manager: &Addr<LockManager>,
    samples: usize,
) -> (Duration, Duration) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let (mut bare, mut recorded) = (Vec::new(), Vec::new());
    for i in 0..samples + 50 {
        let (_, without) = timed_lock(manager, Lock::new("m")).await;
        let with = {
            let _recording = metrics::set_default_local_recorder(&recorder);
            timed_lock(manager, Lock::new("m")).await.1
        };
        if i >= 50 {
            bare.push(without);
            recorded.push(with);
        }
    }
    (percentile(&mut bare, 0.5), percentile(&mut recorded, 0.5))
}

/// `waiters` callers in one manager take turns on one resource; the time from each Unlock's
/// reply to the next grant's reply to another caller (a grant back to the releasing caller is
/// not a hand-off and ends that sample).
async fn local_hand_off(
    manager: &Addr<LockManager>,
    waiters: usize,
    grants: usize,
    polling: Polling,
) -> Vec<Duration> {
    // (when, caller, is_grant)
    let events: Rc<RefCell<Vec<(Instant, usize, bool)>>> = Rc::default();
    let remaining = Rc::new(Cell::new(grants));
    let mut handles = Vec::new();
    for caller in 0..waiters {
        let (manager, events, remaining) =
            (manager.clone(), Rc::clone(&events), Rc::clone(&remaining));
        handles.push(actix_rt::spawn(async move {
            while remaining.get() > 0 {
                let mut request = Acquire::new("handoff").timeout(Duration::from_secs(30));
                request.polling = polling;
                let grant = manager
                    .send(request)
                    .await
                    .unwrap()
                    .expect("hand-off Acquire");
                events.borrow_mut().push((Instant::now(), caller, true));
                remaining.set(remaining.get().saturating_sub(1));
                manager
                    .send(Unlock::new(grant.lock_id))
                    .await
                    .unwrap()
                    .expect("Unlock");
                events.borrow_mut().push((Instant::now(), caller, false));
                // Think time, so the resource is waited for by the others when it is released.
                actix_rt::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for handle in handles {
        handle.await.expect("waiter");
    }
    let mut events = events.take();
    events.sort_by_key(|(at, _, _)| *at);
    let mut hand_offs = Vec::new();
    let mut released: Option<(Instant, usize)> = None;
    for (at, caller, is_grant) in events {
        match (is_grant, released.take()) {
            (true, Some((released_at, by))) if by != caller => hand_offs.push(at - released_at),
            (false, _) => released = Some((at, caller)),
            _ => {}
        }
    }
    hand_offs
}

/// `workers` loops of Acquire+Unlock over `resources` resources for `run`; grants per second.
async fn lock_throughput(
    manager: &Addr<LockManager>,
    workers: usize,
    resources: usize,
    run: Duration,
) -> (f64, u64) {
    let granted = Rc::new(Cell::new(0u64));
    let lost = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + run;
    let mut handles = Vec::new();
    for worker in 0..workers {
        let (manager, granted, lost) = (manager.clone(), Rc::clone(&granted), Rc::clone(&lost));
        handles.push(actix_rt::spawn(async move {
            let mut i = worker * 7919;
            while Instant::now() < deadline {
                let resource = format!("t-{}", i % resources);
                i += 104_729;
                match manager
                    .send(Acquire::new(resource).timeout(Duration::from_secs(30)))
                    .await
                    .unwrap()
                {
                    Ok(grant) => {
                        granted.set(granted.get() + 1);
                        manager
                            .send(Unlock::new(grant.lock_id))
                            .await
                            .unwrap()
                            .expect("Unlock");
                    }
                    Err(_) => lost.set(lost.get() + 1),
                }
            }
        }));
    }
    for handle in handles {
        handle.await.expect("worker");
    }
    (granted.get() as f64 / run.as_secs_f64(), lost.get())
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Resident growth per waiting Acquire, over `count` of them on one held resource.
async fn memory_per_waiter(count: usize) -> f64 {
    let config = config("memory");
    let manager = start(&config).await;
    manager
        .send(Lock::new("held"))
        .await
        .unwrap()
        .expect("hold the resource");
    let before = resident_bytes();
    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        pending.push(manager.send(Acquire::new("held").timeout(Duration::from_secs(60))));
    }
    let waiting = futures::future::join_all(pending);
    let measure = async {
        actix_rt::time::sleep(Duration::from_secs(3)).await;
        resident_bytes()
    };
    let (after, closed) = futures::future::join(measure, async {
        actix_rt::time::sleep(Duration::from_secs(4)).await;
        manager.send(Close).await
    })
    .await;
    closed.expect("Close");
    let answers = waiting.await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(Err(LockError::Closing)))),
        "every waiter ends with Closing"
    );
    after.saturating_sub(before) as f64 / count as f64
}

/// The configuration of a child process's manager, named after its `role` and process.
fn child_config(family_name: String, role: &str) -> LockConfig {
    LockConfig::new(family_name)
        .database(DATABASE)
        .owner(format!("bench-{role}-{}", std::process::id()))
}

/// Now, in microseconds since the Unix epoch: the children's lines carry it so the parent can
/// order events of several processes.
fn unix_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// The child of the cross-process hand-off rows: one worker taking turns on `resource` for
/// `seconds` (hold 100 ms, then wait until the other process holds it), printing
/// `GRANT <unix_us> <waited_us>` and `RELEASE <unix_us>` lines.
async fn child(family_name: String, polling: Polling, seconds: u64) {
    let config = child_config(family_name, "child").ttl(Duration::from_secs(30));
    let manager = start(&config).await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let mut request = Acquire::new("cross").timeout(Duration::from_secs(10));
        request.polling = polling;
        let asked = Instant::now();
        let Ok(grant) = manager.send(request).await.unwrap() else {
            continue;
        };
        let waited = asked.elapsed();
        println!("GRANT {} {}", unix_us(), waited.as_micros());
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        manager
            .send(Unlock::new(grant.lock_id))
            .await
            .unwrap()
            .expect("Unlock");
        println!("RELEASE {}", unix_us());
        // Strict turns: wait until the other process holds the resource, so every release is
        // a hand-off to a waiter that was already waiting (none is missed or double counted).
        // The first look comes after the hand-off usually ends: the looks are the bench's, not
        // the lock's, and must not load the server while the hand-off is measured.
        actix_rt::time::sleep(Duration::from_millis(40)).await;
        let turn_ends = Instant::now() + Duration::from_secs(1);
        while Instant::now() < turn_ends && Instant::now() < deadline {
            let status = manager.send(Status::new("cross")).await.unwrap();
            if let Ok(Some(hold)) = status {
                if hold.live && hold.owner.as_deref() != Some(config.owner.as_str()) {
                    break;
                }
            }
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
    }
    manager.send(Close).await.expect("Close");
}

/// Cross-process hand-off: two children alternate on one resource. Returns the hand-off times
/// (from one process's release to the other's grant).
fn cross_process(polling: Polling, seconds: u64) -> Vec<Duration> {
    let family_name = family("cross");
    let exe = std::env::current_exe().expect("the bench binary");
    let polling_name = if polling == Polling::Fixed {
        "fixed"
    } else {
        "adaptive"
    };
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--child", &family_name, polling_name, &seconds.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start the child")
        })
        .collect();
    let mut events = Vec::new(); // (unix_us, process, asked_us for a grant)
    for (process, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().expect("child runs");
        assert!(output.status.success(), "child failed: {output:?}");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                ["GRANT", at, waited] => {
                    let at = at.parse::<u128>().unwrap();
                    events.push((at, process, Some(at - waited.parse::<u128>().unwrap())));
                }
                ["RELEASE", at] => events.push((at.parse::<u128>().unwrap(), process, None)),
                _ => {}
            }
        }
    }
    events.sort();
    let mut hand_offs = Vec::new();
    let mut last_release: Option<(u128, usize)> = None;
    for (at, process, asked) in events {
        match (asked, last_release.take()) {
            // A hand-off: the other process was already waiting when this one released.
            (Some(asked), Some((released, by))) if by != process && asked <= released => {
                hand_offs.push(Duration::from_micros((at - released) as u64));
            }
            (None, _) => last_release = Some((at, process)),
            _ => {}
        }
    }
    hand_offs
}

/// The child of the waiting-requests row: waits `seconds` for "held" (held by the parent),
/// counting every command its client sends meanwhile; prints `WAITED <us>` and one
/// `COMMAND <name> <count>` line per command name.
async fn waiting_child(family_name: String, polling: Polling, seconds: u64) {
    let commands = Commands::default();
    let counting = Arc::new(AtomicBool::new(false));
    let config = child_config(family_name, "waiter");
    let client = counting_client(Arc::clone(&commands), Arc::clone(&counting)).await;
    let manager = start_with(client, &config).await;
    // The start-up work (index, first purge) is not waiting: let it finish uncounted.
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let mut request = Acquire::new("held").timeout(Duration::from_secs(seconds));
    request.polling = polling;
    let asked = Instant::now();
    let answer = manager.send(request).await.unwrap();
    let waited = asked.elapsed();
    counting.store(false, Ordering::Relaxed);
    assert!(
        matches!(answer, Err(LockError::AcquireTimeout { .. })),
        "the waiter's Acquire answered {answer:?}"
    );
    manager.send(Close).await.expect("Close");
    println!("WAITED {}", waited.as_micros());
    for (name, count) in commands.lock().unwrap().iter() {
        println!("COMMAND {name} {count}");
    }
}

/// Holds a resource here while a child process waits `seconds` for it: the commands the
/// child's manager sent per second of waiting, and those commands by name.
async fn waiting_requests(polling: Polling, seconds: u64) -> (f64, BTreeMap<String, u64>) {
    let config = config("waiting");
    let holder = start(&config).await;
    let grant = holder
        .send(Lock::new("held"))
        .await
        .unwrap()
        .expect("hold the resource");
    let polling_name = if polling == Polling::Fixed {
        "fixed"
    } else {
        "adaptive"
    };
    let exe = std::env::current_exe().expect("the bench binary");
    let child = std::process::Command::new(exe)
        .args(["--child-wait", &config.name, polling_name])
        .arg(seconds.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the waiting child");
    let output = actix_rt::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("wait for the child")
        .expect("the child runs");
    assert!(output.status.success(), "waiting child failed: {output:?}");
    holder
        .send(Unlock::new(grant.lock_id))
        .await
        .unwrap()
        .expect("Unlock");
    let (mut waited_us, mut commands) = (0u64, BTreeMap::new());
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["WAITED", us] => waited_us = us.parse().unwrap(),
            ["COMMAND", name, count] => {
                commands.insert(name.to_owned(), count.parse::<u64>().unwrap());
            }
            _ => {}
        }
    }
    let total: u64 = commands.values().sum();
    (total as f64 / (waited_us as f64 / 1e6).max(1e-9), commands)
}

/// What the fleet rows measured at one fleet size.
struct Fleet {
    /// Commands per second of each waiting manager, on average, while all of them waited.
    waiting_per_manager: f64,
    /// Commands of all the waiting managers while the resource went through all of them,
    /// per release.
    per_release: f64,
    /// From each release to the next grant.
    gaps: Vec<Duration>,
    /// The commands of the cascade, by name.
    commands: BTreeMap<String, u64>,
    /// B measured while the fleet waited: the raw grant on a document of the fleet's own
    /// collection, with every waiting manager's change stream open on it.
    b_beside: Duration,
}

/// `waiters` managers, each on a client of its own (as `waiters` processes would be), wait for
/// one resource held by another manager; every command their clients send is counted. After
/// they have lined up (and the first has renewed its turn to cover the hold), their commands
/// are counted for `window` while they wait, and meanwhile B is measured beside them, on
/// another document of their collection (a server may slow every write by the change streams
/// open on it: SecantusDB does). Then the holder releases and the resource goes through all of
/// them, each holding it 50 ms.
async fn fleet(waiters: usize, window: Duration) -> Fleet {
    let config = config("fleet").ttl(Duration::from_secs(60));
    let holder = start(&config).await;
    let held = holder
        .send(Lock::new("fleet"))
        .await
        .unwrap()
        .expect("hold the resource");
    let commands = Commands::default();
    let counting = Arc::new(AtomicBool::new(false));
    let mut managers = Vec::new();
    for _ in 0..waiters {
        let client = counting_client(Arc::clone(&commands), Arc::clone(&counting)).await;
        managers.push(start_with(client, &config).await);
    }
    // The start-up work (indexes, the first purge) is not waiting.
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let holds: Rc<RefCell<Vec<(Instant, Instant)>>> = Rc::default();
    let mut tasks = Vec::new();
    for manager in &managers {
        let (manager, holds) = (manager.clone(), Rc::clone(&holds));
        tasks.push(actix_rt::spawn(async move {
            let grant = manager
                .send(Acquire::new("fleet").timeout(Duration::from_secs(120)))
                .await
                .unwrap()
                .expect("every waiter is served");
            let granted = Instant::now();
            actix_rt::time::sleep(Duration::from_millis(50)).await;
            manager
                .send(Unlock::new(grant.lock_id))
                .await
                .unwrap()
                .expect("Unlock");
            holds.borrow_mut().push((granted, Instant::now()));
        }));
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // Every waiter refused, lined up, its stream open; the first's turn renewed (half a turn's
    // life, 2.5 s, after it took it) to last as long as the hold.
    actix_rt::time::sleep(Duration::from_secs(4)).await;
    let total = |commands: &Commands| commands.lock().unwrap().values().sum::<u64>();
    counting.store(true, Ordering::Relaxed);
    let raw = Client::with_uri_str(uri()).await.expect("client");
    let beside = raw
        .database(DATABASE)
        .collection::<Document>(&config.collection_name());
    let measured_until = Instant::now() + window;
    let mut b_beside = Vec::new();
    while Instant::now() < measured_until {
        let sent = Instant::now();
        raw_grant(&beside, "beside-the-fleet").await;
        b_beside.push(sent.elapsed());
        actix_rt::time::sleep(Duration::from_millis(40)).await;
    }
    let waiting = total(&commands);
    let before: BTreeMap<String, u64> = commands.lock().unwrap().clone();
    let released = Instant::now();
    holder
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .expect("Unlock");
    for task in tasks {
        task.await.expect("a waiter");
    }
    counting.store(false, Ordering::Relaxed);
    let cascade: BTreeMap<String, u64> = commands
        .lock()
        .unwrap()
        .iter()
        .map(|(name, count)| (name.clone(), count - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, count)| *count > 0)
        .collect();
    let mut holds = holds.take();
    holds.sort();
    let mut gaps = Vec::new();
    let mut last_release = released;
    for (granted, released) in holds {
        gaps.push(granted.saturating_duration_since(last_release));
        last_release = released;
    }
    for manager in managers {
        manager.send(Close).await.expect("Close");
    }
    holder.send(Close).await.expect("Close");
    Fleet {
        waiting_per_manager: waiting as f64 / window.as_secs_f64() / waiters as f64,
        per_release: cascade.values().sum::<u64>() as f64 / waiters as f64,
        gaps,
        commands: cascade,
        b_beside: percentile(&mut b_beside, 0.5),
    }
}

/// The child of the turns rows: `workers` loops of Acquire, 5 ms hold, Unlock on one resource
/// for `seconds`, printing `GRANT <fence> <requested_us> <granted_us>` and
/// `REFUSED <requested_us> <answered_us>` lines.
async fn turns_child(family_name: String, workers: usize, seconds: u64) {
    let config = child_config(family_name, "turns").ttl(Duration::from_secs(30));
    let manager = start(&config).await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for _ in 0..workers {
        let manager = manager.clone();
        handles.push(actix_rt::spawn(async move {
            while Instant::now() < deadline {
                let requested = unix_us();
                let answer = manager
                    .send(Acquire::new("turns").timeout(Duration::from_secs(10)))
                    .await
                    .unwrap();
                let Ok(grant) = answer else {
                    println!("REFUSED {requested} {}", unix_us());
                    continue;
                };
                println!("GRANT {} {requested} {}", grant.fence, unix_us());
                actix_rt::time::sleep(Duration::from_millis(5)).await;
                manager
                    .send(Unlock::new(grant.lock_id))
                    .await
                    .unwrap()
                    .expect("Unlock");
            }
        }));
    }
    for handle in handles {
        handle.await.expect("worker");
    }
    manager.send(Close).await.expect("Close");
}

/// What the turns rows report of one run.
#[derive(Debug, Default)]
struct Turns {
    /// The smaller process's grants over all grants.
    smaller_share: f64,
    /// The most grants in a row to one process, each made while another process had an
    /// Acquire sent at or before the grant and not yet answered.
    longest_streak: usize,
    per_second: f64,
    refused: usize,
}

/// Runs one turns child per entry of `workers` (each its worker count) on one resource for
/// `seconds`, and reads their turns.
fn turns_of(workers: &[usize], seconds: u64) -> Turns {
    let family_name = family("turns");
    let exe = std::env::current_exe().expect("the bench binary");
    let children: Vec<_> = workers
        .iter()
        .map(|workers| {
            std::process::Command::new(&exe)
                .args(["--child-turns", &family_name])
                .args([workers.to_string(), seconds.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start the turns child")
        })
        .collect();
    // Every child's output is read at once: a child blocked on a full pipe would lose turns.
    let readers: Vec<_> = children
        .into_iter()
        .map(|child| std::thread::spawn(move || child.wait_with_output()))
        .collect();
    // (fence, process, granted_us) and (process, from_us, until_us).
    let (mut grants, mut waits) = (Vec::new(), Vec::new());
    let mut refused = 0;
    for (process, reader) in readers.into_iter().enumerate() {
        let output = reader.join().expect("reader").expect("child runs");
        assert!(output.status.success(), "turns child failed: {output:?}");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let us = |s: &str| s.parse::<u128>().unwrap();
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["GRANT", fence, requested, granted] => {
                    grants.push((fence.parse::<i64>().unwrap(), process, us(granted)));
                    waits.push((process, us(requested), us(granted)));
                }
                ["REFUSED", requested, answered] => {
                    refused += 1;
                    waits.push((process, us(requested), us(answered)));
                }
                _ => {}
            }
        }
    }
    grants.sort();
    let mut per_process = vec![0usize; workers.len()];
    let (mut streak, mut longest_streak, mut previous) = (0, 0, None);
    for &(_, process, granted) in &grants {
        per_process[process] += 1;
        let other_waiting = waits
            .iter()
            .any(|&(by, from, until)| by != process && from <= granted && until > granted);
        streak = match (other_waiting, previous == Some(process)) {
            (false, _) => 0,
            (true, true) => streak + 1,
            (true, false) => 1,
        };
        longest_streak = longest_streak.max(streak);
        previous = Some(process);
    }
    Turns {
        smaller_share: per_process.iter().copied().min().unwrap_or(0) as f64
            / grants.len().max(1) as f64,
        longest_streak,
        per_second: grants.len() as f64 / seconds as f64,
        refused,
    }
}

/// Two processes of 4 workers each on one resource, then the same 8 workers in one process:
/// the turns of the first, and the grants per second of both.
fn fair_turns(seconds: u64) -> (Turns, Turns) {
    (turns_of(&[4, 4], seconds), turns_of(&[8], seconds))
}

/// Runs [`memory_per_waiter`] in a fresh process, so earlier rows' heap does not hide growth.
fn memory_in_fresh_process(count: usize) -> f64 {
    let exe = std::env::current_exe().expect("the bench binary");
    let output = std::process::Command::new(exe)
        .args(["--child-memory", &count.to_string()])
        .output()
        .expect("start the memory child");
    assert!(output.status.success(), "memory child failed: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the memory child prints bytes per waiter")
}

/// A candidate of the election rows: tells `elected` of each election, with its instant.
struct BenchCandidate {
    who: usize,
    elected: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
}

impl actix::Actor for BenchCandidate {
    type Context = actix::Context<Self>;
}

impl actix::Handler<Elected> for BenchCandidate {
    type Result = ();
    fn handle(&mut self, _: Elected, _: &mut actix::Context<Self>) {
        let _ = self.elected.send((self.who, Instant::now()));
    }
}

impl actix::Handler<Deposed> for BenchCandidate {
    type Result = ();
    fn handle(&mut self, _: Deposed, _: &mut actix::Context<Self>) {}
}

/// Two candidates, each on a manager and a client of its own (as two processes would be), hand
/// an office back and forth `rounds` times: the leader resigns, and the time until the other is
/// told `Elected` is one sample; then the one that resigned campaigns again, to be next in line.
async fn election_hand_offs(rounds: usize) -> (Vec<Duration>, BTreeMap<String, u64>) {
    use actix::Actor;
    let config = config("election");
    let (tx, mut elected) = tokio::sync::mpsc::unbounded_channel();
    let mut electors = Vec::new();
    let mut managers = Vec::new();
    let commands = Commands::default();
    let counting = Arc::new(AtomicBool::new(false));
    for who in 0..2 {
        let client = counting_client(Arc::clone(&commands), Arc::clone(&counting)).await;
        let manager = start_with(client, &config).await;
        let candidate = BenchCandidate {
            who,
            elected: tx.clone(),
        }
        .start();
        electors.push(
            Elector::new(manager.clone(), "office", &candidate)
                .expect("a valid office")
                .start(),
        );
        managers.push(manager);
    }
    let (mut leader, _) = elected.recv().await.expect("a first leader");
    // The other one lines up behind the leader.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::new();
    for _ in 0..rounds {
        counting.store(true, Ordering::Relaxed);
        let resigned = Instant::now();
        electors[leader]
            .send(Resign)
            .await
            .expect("the elector runs")
            .expect("Resign");
        let (next, at) = elected.recv().await.expect("the next leader");
        counting.store(false, Ordering::Relaxed);
        assert_ne!(
            next, leader,
            "the office went back to the one that resigned"
        );
        samples.push(at - resigned);
        electors[leader].do_send(Campaign);
        leader = next;
        // Let the one that resigned take its place in line before the next resignation.
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    for manager in managers {
        manager.send(Close).await.expect("Close");
    }
    let per_hand_off = commands.lock().unwrap().clone();
    (samples, per_hand_off)
}

#[actix_rt::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child-memory") {
        println!("{}", memory_per_waiter(args[i + 1].parse().unwrap()).await);
        return;
    }
    let polling_of = |name: &str| {
        if name == "fixed" {
            Polling::Fixed
        } else {
            Polling::Adaptive
        }
    };
    if let Some(i) = args.iter().position(|a| a == "--child-wait") {
        let seconds = args[i + 3].parse().unwrap();
        waiting_child(args[i + 1].clone(), polling_of(&args[i + 2]), seconds).await;
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child-turns") {
        let (workers, seconds) = (args[i + 2].parse().unwrap(), args[i + 3].parse().unwrap());
        turns_child(args[i + 1].clone(), workers, seconds).await;
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(
            args[i + 1].clone(),
            polling_of(&args[i + 2]),
            args[i + 3].parse().unwrap(),
        )
        .await;
        return;
    }
    let quick = std::env::var("BENCH_QUICK").is_ok();
    let samples = if quick { 100 } else { 400 };
    let run = Duration::from_secs(if quick { 2 } else { 5 });
    let mut table = Table::default();
    // Which server the rows are of: every ratio is against this server's own B.
    let server = std::env::var("MONGO_SERVER").unwrap_or_else(|_| "external".to_owned());
    eprintln!("lock_bench against {} ({server})", uri());

    let raw = Client::with_uri_str(uri()).await.expect("client");
    let raw_collection = indexed_collection(&raw, "raw").await;
    let manager = start(&config("uncontended")).await;
    let b_collection = indexed_collection(&raw, "raw_b").await;
    let bare_collection = raw
        .database(DATABASE)
        .collection::<Document>(&family("raw_bare"));
    let (b, bare, lock, pair, shared) =
        uncontended(&manager, &b_collection, &bare_collection, samples).await;
    let b = ms(b);
    table.add(
        "B: raw findOneAndUpdate (the grant's shape, the lock indexes), median",
        b,
        "ms",
        None,
        "baseline",
    );
    table.add(
        "the same on a collection without indexes, median",
        ms(bare),
        "ms",
        Some((b, "B")),
        "reported: the server's index upkeep",
    );
    table.add(
        "Lock, uncontended, median",
        ms(lock),
        "ms",
        Some((b, "B")),
        "<= 1.15",
    );
    table.add(
        "Lock+Unlock, uncontended, median",
        ms(pair),
        "ms",
        Some((2.0 * b, "2B")),
        "<= 1.15 (2.3 x B)",
    );
    table.add(
        "shared grant: Lock::shared, uncontended, median",
        ms(shared),
        "ms",
        Some((b, "B")),
        "one round trip (tests/shared_holds.rs counts it); reported",
    );

    if wants("local") {
        let grants = if quick { 100 } else { 400 };
        for (polling, label) in [
            (Polling::Adaptive, "adaptive"),
            (Polling::Fixed, "seed fixed 250 ms"),
        ] {
            let manager = start(&config("local")).await;
            let grants = if polling == Polling::Fixed {
                grants / 10
            } else {
                grants
            };
            let mut hand_offs = local_hand_off(&manager, 8, grants, polling).await;
            let p50 = ms(percentile(&mut hand_offs, 0.5));
            let p99 = ms(percentile(&mut hand_offs, 0.99));
            let target = if polling == Polling::Adaptive {
                "<= 2"
            } else {
                "comparison"
            };
            table.add(
                &format!("local hand-off, 8 waiters, p50 ({label})"),
                p50,
                "ms",
                Some((b, "B")),
                target,
            );
            table.add(
                &format!("local hand-off, 8 waiters, p99 ({label})"),
                p99,
                "ms",
                Some((b, "B")),
                "",
            );
        }
    }

    let seconds = if quick { 4 } else { 12 };
    // A waiter for a resource held in another process is told of releases by a change stream
    // where the server is a replica set (or a router); elsewhere it probes.
    let hello = raw
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .expect("hello");
    let streams = hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid");
    let adaptive = if streams {
        "adaptive, change stream"
    } else {
        "adaptive, probing"
    };
    if wants("cross") {
        for (polling, label) in [
            (Polling::Adaptive, adaptive),
            (Polling::Fixed, "seed fixed 250 ms"),
        ] {
            let mut hand_offs = cross_process(polling, seconds);
            let p50 = ms(percentile(&mut hand_offs, 0.5));
            let p99 = ms(percentile(&mut hand_offs, 0.99));
            let (target_p50, target_p99) = match (polling, streams) {
                (Polling::Adaptive, true) => ("<= 3", "<= 10"),
                (Polling::Adaptive, false) => ("reported", "reported"),
                (Polling::Fixed, _) => ("comparison", ""),
            };
            table.add(
                &format!(
                    "cross-process hand-off, p50 ({label}, n={})",
                    hand_offs.len()
                ),
                p50,
                "ms",
                Some((b, "B")),
                target_p50,
            );
            table.add(
                &format!("cross-process hand-off, p99 ({label})"),
                p99,
                "ms",
                Some((b, "B")),
                target_p99,
            );
        }
    }

    if wants("metrics") {
        let (without, with) = with_and_without_recorder(&manager, samples).await;
        table.add(
            "Lock+Unlock, uncontended, with a metrics recorder installed, median",
            ms(with),
            "ms",
            Some((ms(without), "the same pairs without one")),
            "<= 1.02",
        );
    }

    if wants("election") {
        let rounds = if quick { 20 } else { 60 };
        let (mut hand_offs, commands) = election_hand_offs(rounds).await;
        eprintln!("election: commands of both managers over {rounds} hand-offs: {commands:?}");
        let (target_p50, target_p99) = if streams {
            ("<= 3", "reported")
        } else {
            ("reported", "reported")
        };
        table.add(
            &format!(
                "election: Resign to the next leader told Elected, p50 ({adaptive}, n={})",
                hand_offs.len()
            ),
            ms(percentile(&mut hand_offs, 0.5)),
            "ms",
            Some((b, "B")),
            target_p50,
        );
        table.add(
            &format!("election: Resign to the next leader told Elected, p99 ({adaptive})"),
            ms(percentile(&mut hand_offs, 0.99)),
            "ms",
            Some((b, "B")),
            target_p99,
        );
    }

    if wants("requests") {
        // Ten seconds even in a quick run: the first second (the first try, taking a place, opening
        // the stream) would weigh too much in a shorter wait.
        let wait = 10;
        let (fixed, _) = waiting_requests(Polling::Fixed, wait).await;
        let (adaptive_rate, commands) = waiting_requests(Polling::Adaptive, wait).await;
        table.add(
            &format!(
                "requests/s of a manager waiting {wait} s for a resource held by another process \
                 ({adaptive})"
            ),
            adaptive_rate,
            "req/s",
            Some((fixed, "seed fixed 250 ms")),
            if streams { "<= 2 req/s" } else { "<= 4 req/s" },
        );
        table.commands(commands);
    }

    if wants("fleet") {
        let window = Duration::from_secs(if quick { 5 } else { 10 });
        for waiters in [1, 5, 20, 50] {
            let mut fleet = fleet(waiters, window).await;
            let at_50 = waiters == 50;
            table.add(
                &format!(
                    "fleet of {waiters} waiting managers: requests/s of each while waiting \
                     ({adaptive})"
                ),
                fleet.waiting_per_manager,
                "req/s",
                None,
                if streams {
                    "<= 0.5"
                } else {
                    "<= 4 (1 per acquire_period)"
                },
            );
            table.add(
                &format!(
                    "fleet of {waiters}: commands of all of them per release, 50 ms holds \
                     ({adaptive})"
                ),
                fleet.per_release,
                "commands",
                None,
                if streams { "<= 6" } else { "<= 8" },
            );
            table.commands(std::mem::take(&mut fleet.commands));
            let (p50, p99) = (
                ms(percentile(&mut fleet.gaps, 0.5)),
                ms(percentile(&mut fleet.gaps, 0.99)),
            );
            let b_beside = ms(fleet.b_beside);
            table.add(
                &format!("fleet of {waiters}: B beside the waiting fleet, median"),
                b_beside,
                "ms",
                Some((b, "B")),
                "reported: the server's cost of the open streams",
            );
            table.add(
                &format!(
                    "fleet of {waiters}: hand-off gap, p50 (n={})",
                    fleet.gaps.len()
                ),
                p50,
                "ms",
                Some((b, "B")),
                if streams && at_50 { "<= 3" } else { "reported" },
            );
            table.add(
                &format!("fleet of {waiters}: hand-off gap, p99"),
                p99,
                "ms",
                Some((b, "B")),
                if streams && at_50 {
                    "<= 10"
                } else {
                    "reported"
                },
            );
            table.add(
                &format!("fleet of {waiters}: hand-off gap, p50, against B beside the fleet"),
                p50,
                "ms",
                Some((b_beside, "B beside")),
                "reported",
            );
            table.add(
                &format!("fleet of {waiters}: hand-off gap, p99, against B beside the fleet"),
                p99,
                "ms",
                Some((b_beside, "B beside")),
                "reported",
            );
        }
    }

    if wants("fair") {
        let fair_seconds = if quick { 8 } else { 20 };
        let (two, one) = fair_turns(fair_seconds);
        table.add(
            &format!(
                "two processes x 4 workers, 1 resource, {fair_seconds} s: smaller process's share"
            ),
            two.smaller_share * 100.0,
            "%",
            None,
            "40-60 %",
        );
        table.add(
            &format!(
                "two processes x 4 workers, 1 resource, {fair_seconds} s: longest streak while the \
                 other waited"
            ),
            two.longest_streak as f64,
            "grants",
            None,
            "<= 4",
        );
        table.add(
            &format!(
                "two processes x 4 workers, 1 resource, {fair_seconds} s: grants/s ({} refused)",
                two.refused
            ),
            two.per_second,
            "grants/s",
            Some((one.per_second, "1 process x 8 workers")),
            ">= 0.5",
        );
    }

    if wants("throughput") {
        // Fresh resources first (each grant creates its document, plus the one-read check that it
        // is the only one), then, once every resource exists, the same resources again (the steady
        // state of a lock family).
        let raw_one = raw_throughput(&raw_collection, 16, 1, run).await;
        let fresh = indexed_collection(&raw, "raw_many").await;
        let raw_fresh = raw_throughput(&fresh, 16, 1000, run).await;
        for resource in 0..1000 {
            raw_grant(&fresh, &format!("raw-{resource}")).await;
        }
        let raw_reused = raw_throughput(&fresh, 16, 1000, run).await;
        let manager = start(&config("throughput")).await;
        let (one, lost_one) = lock_throughput(&manager, 16, 1, run).await;
        let (many_fresh, lost_fresh) = lock_throughput(&manager, 16, 1000, run).await;
        for resource in 0..1000 {
            let grant = manager
                .send(Lock::new(format!("t-{resource}")))
                .await
                .unwrap()
                .expect("every resource is free between the passes");
            manager
                .send(Unlock::new(grant.lock_id))
                .await
                .unwrap()
                .expect("Unlock");
        }
        let (many_reused, lost_reused) = lock_throughput(&manager, 16, 1000, run).await;
        table.add(
            &format!("throughput, 16 workers, 1 resource ({lost_one} lost)"),
            one,
            "grants/s",
            Some((raw_one, "raw, 16 tasks, 1 doc")),
            "reported; no grant lost",
        );
        table.add(
            &format!("throughput, 16 workers, 1,000 resources, first use ({lost_fresh} lost)"),
            many_fresh,
            "grants/s",
            Some((raw_fresh, "raw, 16 tasks, 1,000 new docs")),
            "reported",
        );
        table.add(
            &format!("throughput, 16 workers, 1,000 resources, reused ({lost_reused} lost)"),
            many_reused,
            "grants/s",
            Some((raw_reused, "raw, 16 tasks, 1,000 docs")),
            ">= 0.4",
        );
    }

    if wants("memory") {
        let per_waiter = memory_in_fresh_process(if quick { 2000 } else { 10_000 });
        table.add(
            "resident growth per waiting Acquire",
            per_waiter,
            "bytes",
            None,
            "<= 2048",
        );
    }

    table.print();
    println!("\nserver: {server}");
    let path =
        std::env::var("BENCH_JSON").unwrap_or_else(|_| format!("target/lock_bench-{server}.json"));
    std::fs::write(&path, table.json()).expect("write the JSON");
    eprintln!("wrote {path}");
}
