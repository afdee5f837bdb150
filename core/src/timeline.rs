//! A timeline of one run: one slice per executed step, instants for frees,
//! exported as Chrome trace JSON (opens in Perfetto or chrome://tracing).

use std::cell::Cell;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

/// What a timeline event marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A step ran over `[start, start + duration)`.
    Step,
    /// A buffer was freed (duration 0).
    Free,
    /// Data moved between host and device.
    Transfer,
    /// A device's queue busy with a submitted segment, from submission to
    /// completion.
    Queue,
}

/// One event of a run, times in microseconds from the run's start.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEvent {
    /// Step name, or the freed value (`%5`).
    pub name: String,
    /// The op, for steps.
    pub op: &'static str,
    /// Which track it belongs to: the device, and for the CPU the worker
    /// thread (`cpu/worker-1`).
    pub track: String,
    /// What it marks.
    pub kind: EventKind,
    /// Start, µs since the run began.
    pub start_us: f64,
    /// Duration, µs.
    pub duration_us: f64,
}

/// The events of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// Events in the order they were recorded.
    pub events: Vec<TimelineEvent>,
}

impl Timeline {
    /// The steps' slices only.
    pub fn steps(&self) -> impl Iterator<Item = &TimelineEvent> {
        self.events.iter().filter(|e| e.kind == EventKind::Step)
    }

    /// Chrome trace JSON: one `pid` per device, one `tid` per track.
    pub fn to_chrome_json(&self) -> String {
        let mut tracks: Vec<&str> = Vec::new();
        for e in &self.events {
            if !tracks.contains(&e.track.as_str()) {
                tracks.push(&e.track);
            }
        }
        let mut out = String::from("{\"traceEvents\":[\n");
        let mut first = true;
        let mut sep = |out: &mut String| {
            if !first {
                out.push_str(",\n");
            }
            first = false;
        };
        for (tid, track) in tracks.iter().enumerate() {
            sep(&mut out);
            let _ = write!(
                out,
                "{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":{tid},\"args\":{{\"name\":{}}}}}",
                json_string(track)
            );
        }
        for e in &self.events {
            let tid = tracks.iter().position(|t| *t == e.track).unwrap_or(0);
            sep(&mut out);
            match e.kind {
                EventKind::Step | EventKind::Transfer | EventKind::Queue => {
                    let _ = write!(
                        out,
                        "{{\"ph\":\"X\",\"name\":{},\"cat\":\"{}\",\"pid\":1,\"tid\":{tid},\"ts\":{:.3},\"dur\":{:.3}}}",
                        json_string(&e.name),
                        match e.kind {
                            EventKind::Step => e.op,
                            EventKind::Queue => "queue",
                            _ => "transfer",
                        },
                        e.start_us,
                        e.duration_us
                    );
                }
                EventKind::Free => {
                    let _ = write!(
                        out,
                        "{{\"ph\":\"i\",\"s\":\"t\",\"name\":{},\"cat\":\"free\",\"pid\":1,\"tid\":{tid},\"ts\":{:.3}}}",
                        json_string(&format!("free {}", e.name)),
                        e.start_us
                    );
                }
            }
        }
        out.push_str("\n],\"displayTimeUnit\":\"ms\"}\n");
        out
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

thread_local! {
    /// When the step now running on this thread started.
    static STEP_START: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Records events during a run when a timeline was asked for.
#[derive(Debug)]
pub(crate) struct Recorder {
    origin: Instant,
    events: Mutex<Vec<TimelineEvent>>,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Recorder {
            origin: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn mark_start() {
        STEP_START.with(|s| s.set(Some(Instant::now())));
    }

    fn us(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.origin).as_secs_f64() * 1e6
    }

    fn push(&self, e: TimelineEvent) {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(e);
    }

    /// Ends the slice of the step started on this thread.
    pub(crate) fn step_done(&self, name: &str, op: &'static str, track: String) {
        let end = Instant::now();
        let start = STEP_START.with(Cell::take).unwrap_or(end);
        self.push(TimelineEvent {
            name: name.to_string(),
            op,
            track,
            kind: EventKind::Step,
            start_us: self.us(start),
            duration_us: (self.us(end) - self.us(start)).max(0.0),
        });
    }

    /// A free or a transfer at a point in time, or over `[start, now)`.
    pub(crate) fn event(
        &self,
        kind: EventKind,
        name: String,
        track: String,
        start: Option<Instant>,
    ) {
        let end = Instant::now();
        let start = start.unwrap_or(end);
        self.push(TimelineEvent {
            name,
            op: "",
            track,
            kind,
            start_us: self.us(start),
            duration_us: self.us(end) - self.us(start),
        });
    }

    pub(crate) fn finish(self) -> Timeline {
        Timeline {
            events: self
                .events
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }
}

/// The track name of the current thread on `device`: the rayon worker
/// index when on a pool, else the thread's name.
pub(crate) fn track(device: &str) -> String {
    match std::thread::current().name() {
        Some(n) => format!("{device}/{n}"),
        None => format!("{device}/{:?}", std::thread::current().id()),
    }
}
