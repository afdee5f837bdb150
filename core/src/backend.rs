//! The `Backend` trait: what a device must do to run segments of a plan,
//! and the per-run buffer table and memory meter it works through.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::plan::{Step, ValueId};
use crate::timeline::{self, EventKind, Recorder};
use crate::{Device, Error, Op, Result, TensorType, Value};

/// An opaque handle to a buffer owned by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufferId(pub u64);

/// A kernel as a backend sees it: the op with its operand and result types.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    /// What to compute.
    pub op: Op,
    /// Operand types, in order.
    pub inputs: Vec<TensorType>,
    /// Result types, in order.
    pub outputs: Vec<TensorType>,
}

/// A device that runs plan segments. Object-safe: a plan drives its
/// backends through `Arc<dyn Backend>`.
///
/// A backend owns its buffers and hands out [`BufferId`]s. It reports every
/// buffer it creates or destroys to the run's [`Meter`], so the executor
/// measures real peak memory.
pub trait Backend: Send + Sync {
    /// A short name for messages, e.g. `cpu` or the adapter's name.
    fn name(&self) -> &str;

    /// Which device this is: [`Device::Cpu`] or [`Device::Gpu`].
    fn device(&self) -> Device;

    /// `Ok` when the backend can run `kernel`, else why not.
    fn supports(&self, kernel: &Kernel) -> std::result::Result<(), String>;

    /// A new, uninitialised buffer for a value of type `ty`.
    fn alloc(&self, ty: &TensorType, meter: &Meter) -> Result<BufferId>;

    /// Releases a buffer.
    fn free(&self, buffer: BufferId, meter: &Meter) -> Result<()>;

    /// A new buffer holding a copy of a host value.
    fn upload(&self, value: &Value, meter: &Meter) -> Result<BufferId>;

    /// Copies a buffer back to the host.
    fn download(&self, buffer: BufferId) -> Result<Value>;

    /// Runs a segment: each step in order, binding operands from `env`,
    /// storing results into `env`, and releasing each step's
    /// [`Step::free_after`] buffers right after it (see [`release_after`]).
    fn execute(&self, segment: &Segment<'_>, env: &Env<'_>) -> Result<()>;

    /// Waits until all submitted work has finished.
    fn synchronize(&self) -> Result<()>;

    /// Buffers currently alive in this backend (zero when no plan runs).
    fn live_buffers(&self) -> usize;
}

/// A run of consecutive plan steps placed on one backend.
#[derive(Debug)]
pub struct Segment<'a> {
    /// The steps, in execution order.
    pub steps: &'a [Step],
    /// The run's meter for this backend.
    pub meter: &'a Meter,
}

/// Live bytes, peak bytes and allocation count of one device in one run.
#[derive(Debug, Default)]
pub struct Meter {
    live: AtomicUsize,
    peak: AtomicUsize,
    allocations: AtomicUsize,
}

impl Meter {
    /// Records a new buffer of `bytes`.
    pub fn alloc(&self, bytes: usize) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
        self.allocations.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a released buffer of `bytes`.
    pub fn free(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Most bytes alive at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Buffers created.
    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::Relaxed)
    }
}

/// The buffer table of one run: which buffer holds each value, and the
/// fed host values. Shared by the backends of a run.
#[derive(Debug)]
pub struct Env<'a> {
    slots: Vec<AtomicU64>,
    feeds: Vec<Option<&'a Value>>,
    pub(crate) recorder: Option<&'a Recorder>,
}

/// Slot value meaning "no buffer": ids are stored plus one.
const EMPTY: u64 = 0;

impl<'a> Env<'a> {
    pub(crate) fn new(
        values: usize,
        feeds: Vec<Option<&'a Value>>,
        recorder: Option<&'a Recorder>,
    ) -> Self {
        Env {
            slots: (0..values).map(|_| AtomicU64::new(EMPTY)).collect(),
            feeds,
            recorder,
        }
    }

    /// The buffer holding `v`; an error if it is not (or no longer) alive.
    pub fn buffer(&self, v: ValueId) -> Result<BufferId> {
        match self.slots.get(v.0).map(|s| s.load(Ordering::Acquire)) {
            Some(EMPTY) | None => Err(Error::Internal(format!("{v} has no buffer"))),
            Some(id) => Ok(BufferId(id - 1)),
        }
    }

    /// Records that `buffer` now holds `v`.
    pub fn set(&self, v: ValueId, buffer: BufferId) -> Result<()> {
        let slot = self
            .slots
            .get(v.0)
            .ok_or_else(|| Error::Internal(format!("{v} out of range")))?;
        slot.store(buffer.0 + 1, Ordering::Release);
        Ok(())
    }

    /// Removes and returns the buffer of `v`, if any.
    pub fn take(&self, v: ValueId) -> Option<BufferId> {
        match self.slots.get(v.0)?.swap(EMPTY, Ordering::AcqRel) {
            EMPTY => None,
            id => Some(BufferId(id - 1)),
        }
    }

    /// The host value fed for input `v`.
    pub fn feed(&self, v: ValueId) -> Result<&'a Value> {
        self.feeds
            .get(v.0)
            .copied()
            .flatten()
            .ok_or_else(|| Error::Internal(format!("{v} has no feed")))
    }

    /// Every value that still has a buffer.
    pub(crate) fn remaining(&self) -> Vec<ValueId> {
        (0..self.slots.len())
            .map(ValueId)
            .filter(|&v| self.slots[v.0].load(Ordering::Acquire) != EMPTY)
            .collect()
    }
}

/// Emits the `run` trace event of a step; backends call it as each starts.
pub fn trace_run(step: &Step) {
    Recorder::mark_start();
    tracing::debug!(target: "tensorgraph", "run {}", step.name);
}

/// Frees the buffers whose last use was `step`, tracing each. Backends call
/// this right after running a step.
///
/// When the run records a timeline, this also closes the step's slice
/// (opened by [`trace_run`]) and marks each free.
pub fn release_after(backend: &dyn Backend, step: &Step, env: &Env<'_>, meter: &Meter) -> Result<()> {
    let track = env.recorder.map(|rec| {
        let track = timeline::track(backend.device().name());
        rec.step_done(&step.name, step.kernel.op.name(), track.clone());
        track
    });
    for &v in &step.free_after {
        if let Some(buffer) = env.take(v) {
            backend.free(buffer, meter)?;
            tracing::debug!(target: "tensorgraph", "free {v} after {}", step.name);
            if let (Some(rec), Some(track)) = (env.recorder, &track) {
                rec.event(EventKind::Free, v.to_string(), track.clone(), None);
            }
        }
    }
    Ok(())
}
