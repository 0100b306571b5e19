//! Per-step accounting of bytes, rounds and time.
//!
//! A [`Meter`] keeps a stack of open protocol steps (`meter.scope("ot/iknp")`); bytes, rounds
//! and wall time are charged to the innermost open step (exclusively: a parent is not charged for
//! what its child used), so the steps of a report add up to the total.
//!
//! Bytes are counted where the application writes and reads them, not where the transport moves
//! them: a [`Channel`](super::Channel) counts its frames (header and payload) when it sends and
//! when it has received them, and the OT library's traffic is counted from the `cryprot_metrics`
//! events its streams emit on every read and write ([`Meter::count_library_traffic`]). So a byte
//! lands in the step this party is in when it writes or reads it: bytes the peer sends ahead
//! while this party still works on the previous step are charged to the step that reads them,
//! and for every step the bytes one party sent are the bytes the other received.
//!
//! A library protocol can also run in the background beside the open steps (the OT engine's
//! prefetch, [`Meter::background`]): its bytes are counted apart and booked whole to a step of its
//! own when both parties settle it, so steps still mirror and add up to the total; its wall time
//! is not booked (the steps that ran meanwhile were charged that time already).
//!
//! A *round* is one round trip: this party counts one each time it sends after having received
//! (or sends first). Ping-pong of `2k` messages is `k` rounds; both parties sending at once is one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::instrument::{WithDispatch, WithSubscriber};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber, span};

/// Running totals of payload bytes sent and received on one link.
#[derive(Debug, Default)]
pub struct ByteCounter {
    sent: AtomicU64,
    received: AtomicU64,
}

impl ByteCounter {
    /// Records `n` bytes sent.
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Records `n` bytes received.
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (u64, u64) {
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }
}

/// What one protocol step cost this party.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// Payload bytes this party sent.
    pub bytes_sent: u64,
    /// Payload bytes this party received.
    pub bytes_received: u64,
    /// Round trips (see the module docs).
    pub rounds: u64,
    /// Messages this party sent on its own channel.
    pub messages: u64,
    /// Wall time spent in the step.
    pub seconds: f64,
}

impl StepStats {
    /// Bytes in both directions together.
    pub fn bytes(&self) -> u64 {
        self.bytes_sent + self.bytes_received
    }

    fn add(&mut self, other: &StepStats) {
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.rounds += other.rounds;
        self.messages += other.messages;
        self.seconds += other.seconds;
    }
}

/// A finished account: one row per step path (`"outer/inner"`), in name order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Step path and its costs.
    pub steps: Vec<(String, StepStats)>,
}

impl Report {
    /// Sum over all steps.
    pub fn total(&self) -> StepStats {
        let mut t = StepStats::default();
        for (_, s) in &self.steps {
            t.add(s);
        }
        t
    }

    /// Sum over the steps whose path starts with `prefix`.
    pub fn prefixed(&self, prefix: &str) -> StepStats {
        let mut t = StepStats::default();
        for (_, s) in self.steps.iter().filter(|(n, _)| n.starts_with(prefix)) {
            t.add(s);
        }
        t
    }
}

#[derive(Debug)]
struct State {
    path: Vec<String>,
    steps: BTreeMap<String, StepStats>,
    mark_bytes: (u64, u64),
    mark_time: Instant,
    received_since_send: bool,
}

/// Accounting for one link; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Meter {
    counter: Arc<ByteCounter>,
    state: Arc<Mutex<State>>,
}

/// An open protocol step; closing it (drop) charges what it used.
#[must_use = "a scope charges its step only while it is alive"]
#[derive(Debug)]
pub struct Scope {
    meter: Meter,
    depth: usize,
}

impl Meter {
    /// A meter reading bytes from `counter`.
    pub fn new(counter: Arc<ByteCounter>) -> Self {
        let mark_bytes = counter.snapshot();
        Self {
            counter,
            state: Arc::new(Mutex::new(State {
                path: Vec::new(),
                steps: BTreeMap::new(),
                mark_bytes,
                mark_time: Instant::now(),
                received_since_send: true,
            })),
        }
    }

    /// The byte counter the channels and [`Meter::count_library_traffic`] feed.
    pub fn counter(&self) -> &Arc<ByteCounter> {
        &self.counter
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn charge(&self, st: &mut State) {
        let now_bytes = self.counter.snapshot();
        let now = Instant::now();
        if st.path.is_empty() && now_bytes == st.mark_bytes {
            // Nothing moved outside any step: no "(unscoped)" row.
            st.mark_time = now;
            return;
        }
        let entry = st.steps.entry(step_key(&st.path)).or_default();
        entry.bytes_sent += now_bytes.0 - st.mark_bytes.0;
        entry.bytes_received += now_bytes.1 - st.mark_bytes.1;
        entry.seconds += (now - st.mark_time).as_secs_f64();
        st.mark_bytes = now_bytes;
        st.mark_time = now;
    }

    /// Opens a protocol step named `name`, nested in the step open now.
    pub fn scope(&self, name: &str) -> Scope {
        let mut st = self.lock();
        self.charge(&mut st);
        st.path.push(name.to_string());
        let depth = st.path.len();
        drop(st);
        tracing::debug!(step = name, "step opened");
        Scope { meter: self.clone(), depth }
    }

    /// Path of the step open now (for error messages).
    pub fn current_step(&self) -> String {
        step_key(&self.lock().path)
    }

    fn with_current(&self, f: impl FnOnce(&mut StepStats)) {
        let mut st = self.lock();
        let key = step_key(&st.path);
        f(st.steps.entry(key).or_default());
    }

    /// Called by a channel when it sends a message.
    pub fn on_send(&self) {
        let mut st = self.lock();
        let new_round = st.received_since_send;
        st.received_since_send = false;
        drop(st);
        self.with_current(|s| {
            s.messages += 1;
            if new_round {
                s.rounds += 1;
            }
        });
    }

    /// Called by a channel when it receives a message.
    pub fn on_receive(&self) {
        self.lock().received_since_send = true;
    }

    /// Charges `rounds` round trips run inside a library protocol (e.g. the OT extension) whose
    /// messages do not pass through our channel.
    pub fn add_rounds(&self, rounds: u64) {
        self.with_current(|s| s.rounds += rounds);
        self.lock().received_since_send = true;
    }

    /// Runs `fut` (a call into a library protocol over `cryprot-net` streams, such as the OT
    /// extension) with its stream reads and writes counted into this meter: `cryprot-net` emits
    /// a `cryprot_metrics` tracing event with `bytes_read` or `bytes_written` for each, in the
    /// task that does it; while `fut` is polled these go to this meter's counter, and every
    /// other span and event to the subscriber that was in force.
    pub fn count_library_traffic<F>(&self, fut: F) -> WithDispatch<F> {
        count_library_traffic_into(&self.counter, fut)
    }

    /// Opens step `name`, nested in the step open now, for a library protocol that runs in the
    /// background while the foreground goes on (the OT engine's prefetch): its traffic is
    /// counted apart ([`Background::count_library_traffic`]) and booked whole to that step when
    /// [`Meter::book`] is called — at a point both parties reach alike, so that their reports
    /// still mirror each other step by step.
    pub fn background(&self, name: &str) -> Background {
        let mut path = self.lock().path.clone();
        path.push(name.to_string());
        Background { step: step_key(&path), counter: Arc::default() }
    }

    /// Books a finished background step: the bytes it counted and `rounds` round trips (run
    /// beside the foreground's, so they add no latency of their own in practice, but are
    /// counted); not its wall time, which the foreground's steps were charged as it passed.
    pub fn book(&self, step: Background, rounds: u64) {
        let (sent, received) = step.counter.snapshot();
        let mut st = self.lock();
        let entry = st.steps.entry(step.step).or_default();
        entry.bytes_sent += sent;
        entry.bytes_received += received;
        entry.rounds += rounds;
    }

    /// The account so far (the open step is charged up to now).
    pub fn report(&self) -> Report {
        let mut st = self.lock();
        self.charge(&mut st);
        Report { steps: st.steps.iter().map(|(k, v)| (k.clone(), *v)).collect() }
    }
}

/// A step running in the background ([`Meter::background`]); cheap to move into a task.
#[derive(Debug)]
pub struct Background {
    step: String,
    counter: Arc<ByteCounter>,
}

impl Background {
    /// The step's path (for error messages).
    pub fn step(&self) -> &str {
        &self.step
    }

    /// [`Meter::count_library_traffic`], counted into this step alone.
    pub fn count_library_traffic<F>(&self, fut: F) -> WithDispatch<F> {
        count_library_traffic_into(&self.counter, fut)
    }
}

/// Runs `fut` with the `cryprot_metrics` events of its library streams counted into `counter`.
fn count_library_traffic_into<F>(counter: &Arc<ByteCounter>, fut: F) -> WithDispatch<F> {
    let outer = tracing::dispatcher::get_default(Dispatch::clone);
    fut.with_subscriber(LibraryTraffic { counter: counter.clone(), outer })
}

/// Target of the events `cryprot-net` emits for the bytes its streams read and write.
const LIBRARY_TRAFFIC_TARGET: &str = "cryprot_metrics";

/// The subscriber of [`Meter::count_library_traffic`]: books `cryprot_metrics` events into a
/// counter, forwards everything else to `outer`.
struct LibraryTraffic {
    counter: Arc<ByteCounter>,
    outer: Dispatch,
}

/// Reads the byte count of a `cryprot_metrics` event.
#[derive(Default)]
struct TrafficVisitor {
    read: u64,
    written: u64,
}

impl Visit for TrafficVisitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "bytes_read" => self.read += value,
            "bytes_written" => self.written += value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, value.max(0) as u64);
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

impl Subscriber for LibraryTraffic {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.target() == LIBRARY_TRAFFIC_TARGET { Interest::always() } else { self.outer.register_callsite(meta) }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        meta.target() == LIBRARY_TRAFFIC_TARGET || self.outer.enabled(meta)
    }

    fn new_span(&self, attrs: &span::Attributes<'_>) -> span::Id {
        self.outer.new_span(attrs)
    }

    fn record(&self, span: &span::Id, values: &span::Record<'_>) {
        self.outer.record(span, values);
    }

    fn record_follows_from(&self, span: &span::Id, follows: &span::Id) {
        self.outer.record_follows_from(span, follows);
    }

    fn event(&self, event: &Event<'_>) {
        if event.metadata().target() != LIBRARY_TRAFFIC_TARGET {
            return self.outer.event(event);
        }
        let mut seen = TrafficVisitor::default();
        event.record(&mut seen);
        self.counter.add_sent(seen.written);
        self.counter.add_received(seen.read);
    }

    fn enter(&self, span: &span::Id) {
        self.outer.enter(span);
    }

    fn exit(&self, span: &span::Id) {
        self.outer.exit(span);
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        self.outer.clone_span(id)
    }

    fn try_close(&self, id: span::Id) -> bool {
        self.outer.try_close(id)
    }

    fn current_span(&self) -> tracing_core::span::Current {
        self.outer.current_span()
    }
}

/// The report key of a step path: `"outer/inner"`, or `"(unscoped)"` outside any step.
fn step_key(path: &[String]) -> String {
    if path.is_empty() { "(unscoped)".to_string() } else { path.join("/") }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let mut st = self.meter.lock();
        self.meter.charge(&mut st);
        st.path.truncate(self.depth - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_go_to_the_innermost_open_step_and_add_up() {
        let counter = Arc::new(ByteCounter::default());
        let meter = Meter::new(counter.clone());
        {
            let _outer = meter.scope("layer");
            counter.add_sent(10);
            {
                let _inner = meter.scope("ot");
                counter.add_sent(100);
                counter.add_received(7);
            }
            counter.add_received(1);
        }
        let r = meter.report();
        assert_eq!(r.steps.len(), 2);
        let layer = r.steps.iter().find(|(n, _)| n == "layer").map(|x| x.1).unwrap_or_default();
        let ot = r.steps.iter().find(|(n, _)| n == "layer/ot").map(|x| x.1).unwrap_or_default();
        assert_eq!((layer.bytes_sent, layer.bytes_received), (10, 1));
        assert_eq!((ot.bytes_sent, ot.bytes_received), (100, 7));
        assert_eq!(r.total().bytes(), 118);
        assert_eq!(r.prefixed("layer").bytes(), 118);
    }

    #[test]
    fn a_round_is_a_send_after_a_receive() {
        let meter = Meter::new(Arc::new(ByteCounter::default()));
        let _s = meter.scope("p");
        meter.on_send(); // first flight: round 1
        meter.on_send(); // same flight
        meter.on_receive();
        meter.on_send(); // round 2
        meter.on_receive();
        meter.on_receive();
        meter.on_send(); // round 3
        let t = meter.report().total();
        assert_eq!(t.rounds, 3);
        assert_eq!(t.messages, 4);
    }
}
