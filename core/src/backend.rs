//! The `Backend` trait: what a device must do to run segments of a plan,
//! and the per-run buffer table and memory meter it works through.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::fused::{FusedExpr, Instr};
use crate::plan::{Plan, Step, ValueId};
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

impl Kernel {
    /// The elementwise program this kernel computes: a fused kernel's own,
    /// or a lone unary, binary or cast op as a program of that one op over
    /// its operands. `None` for every other op, and for a lone op whose
    /// operand count does not match it. Backends run a lone op in place
    /// through this, the way they run a fused one.
    pub fn elementwise_program(&self) -> Option<Arc<FusedExpr>> {
        let arity = match self.op {
            Op::Fused(ref expr) => return Some(expr.clone()),
            Op::Unary(_) | Op::Cast(_) => 1,
            Op::Binary(_) => 2,
            _ => return None,
        };
        let ([out], true) = (&self.outputs[..], self.inputs.len() == arity) else {
            return None;
        };
        let mut instrs: Vec<Instr> = (0..arity).map(Instr::Input).collect();
        instrs.push(match self.op {
            Op::Unary(u) => Instr::Unary(u, 0),
            Op::Binary(b) => Instr::Binary(b, 0, 1),
            Op::Cast(to) => Instr::Cast(to, 0),
            _ => return None,
        });
        let dtypes = self.inputs.iter().map(|t| t.dtype);
        Some(Arc::new(FusedExpr {
            instrs,
            dtypes: dtypes.chain([out.dtype]).collect(),
        }))
    }

    /// Whether this is an elementwise kernel (fused, unary, binary or
    /// cast) of one result with some operand's exact type: a kernel every
    /// backend with a fused path can run in place over that operand, each
    /// element read before the same element is written.
    pub fn elementwise_in_place(&self) -> bool {
        matches!(
            self.op,
            Op::Fused(_) | Op::Unary(_) | Op::Binary(_) | Op::Cast(_)
        ) && matches!(&self.outputs[..], [out] if self.inputs.contains(out))
    }
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

    /// Moves a buffer's value to the host and releases the buffer. The
    /// default downloads then frees; a host backend can hand its array
    /// over without a copy.
    /// The buffer is released even when the download fails.
    fn take(&self, buffer: BufferId, meter: &Meter) -> Result<Value> {
        let value = self.download(buffer);
        self.free(buffer, meter)?;
        value
    }

    /// A new buffer holding `value`, which the backend may keep as it is.
    /// The default uploads a copy.
    fn upload_owned(&self, value: Value, meter: &Meter) -> Result<BufferId> {
        self.upload(&value, meter)
    }

    /// Copies this backend's `buffer` (of the run `env`) into a new buffer
    /// of `to`, metered on `meter`. The default goes through a host copy
    /// ([`Backend::download`], then [`Backend::upload_owned`]); a backend
    /// that holds host memory hands its value to `to.upload` directly.
    fn transfer_to(
        &self,
        buffer: BufferId,
        env: &Env<'_>,
        to: &dyn Backend,
        meter: &Meter,
    ) -> Result<BufferId> {
        let _ = env;
        to.upload_owned(self.download(buffer)?, meter)
    }

    /// Offered the host storage of a caller's output slot before a
    /// [`Plan::run_into`] computes that output here. A backend that
    /// builds its results in host memory may take the storage for reuse,
    /// leaving an empty array of the same dtype, for
    /// [`Backend::take_into`] to refill. The default keeps the slot as it
    /// is, for `take_into` to write into.
    fn recycle(&self, slot: &mut Value) {
        let _ = slot;
    }

    /// [`Backend::take`] into `dst`: afterwards `dst` holds the buffer's
    /// value. A backend that copies to the host writes into `dst`'s
    /// storage when it has the buffer's type and a standard layout. The
    /// buffer is released even when the copy fails.
    fn take_into(&self, buffer: BufferId, meter: &Meter, dst: &mut Value) -> Result<()> {
        *dst = self.take(buffer, meter)?;
        Ok(())
    }

    /// Runs a segment: each step in order, binding operands from `env`,
    /// storing results into `env`, and releasing each step's
    /// [`Step::free_after`] buffers right after it (see [`release_after`]).
    fn execute(&self, segment: &Segment<'_>, env: &Env<'_>) -> Result<()>;

    /// Whether the backend can write `kernel`'s result into the buffer of
    /// an operand that dies at it (see [`Step::in_place`]). The planner
    /// marks such steps only where this says yes; the backend must then do
    /// exactly that, through [`take_in_place`].
    fn supports_in_place(&self, kernel: &Kernel) -> bool {
        let _ = kernel;
        false
    }

    /// The most storage buffers one kernel may bind, operands and result
    /// together; `None` where no such limit exists (the CPU). Fusion keeps
    /// every kernel it builds within the least of the plan's backends.
    fn max_kernel_buffers(&self) -> Option<usize> {
        None
    }

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
pub struct Env<'a> {
    slots: Vec<AtomicU64>,
    feeds: Vec<Option<&'a Value>>,
    /// Readers of each value still to run; a value is freed when it drops
    /// to zero. Requested outputs start out of reach of zero.
    readers_left: Vec<AtomicU32>,
    /// The backend index holding each value (the plan's).
    owner: &'a [usize],
    /// The values the run returns.
    outputs: &'a [ValueId],
    backends: &'a [Arc<dyn Backend>],
    meters: &'a [Meter],
    pub(crate) recorder: Option<&'a Recorder>,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("values", &self.slots.len())
            .finish()
    }
}

/// Slot value meaning "no buffer": ids are stored plus one.
const EMPTY: u64 = 0;

/// Reader count of requested outputs: never reaches zero during a run.
const KEPT: u32 = u32::MAX / 2;

impl<'a> Env<'a> {
    pub(crate) fn new(
        plan: &'a Plan,
        feeds: Vec<Option<&'a Value>>,
        meters: &'a [Meter],
        recorder: Option<&'a Recorder>,
    ) -> Self {
        let values = plan.types.len();
        let mut readers_left: Vec<AtomicU32> =
            plan.readers.iter().map(|&r| AtomicU32::new(r)).collect();
        for v in &plan.outputs {
            *readers_left[v.0].get_mut() = KEPT;
        }
        Env {
            slots: (0..values).map(|_| AtomicU64::new(EMPTY)).collect(),
            feeds,
            readers_left,
            owner: &plan.value_device,
            outputs: &plan.outputs,
            backends: &plan.backends,
            meters,
            recorder,
        }
    }

    /// Frees `v` on the backend that holds it, if it still has a buffer.
    fn free_value(&self, v: ValueId, after: &Step) -> Result<()> {
        if let Some(buffer) = self.take(v) {
            let owner = self.owner[v.0];
            self.backends[owner].free(buffer, &self.meters[owner])?;
            tracing::debug!(target: "tensorgraph", "free {v} after {}", after.name);
            if let Some(rec) = self.recorder {
                let track = timeline::track(self.backends[owner].device().name());
                rec.event(EventKind::Free, v.to_string(), track, None);
            }
        }
        Ok(())
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

    /// Whether the run returns `v` (its buffer outlives the run's steps).
    pub fn is_output(&self, v: ValueId) -> bool {
        self.outputs.contains(&v)
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

/// For a step planned in place: removes the donor operand's buffer from
/// the run's table (so it is not freed after the step) and returns it; the
/// backend writes the result into it and stores it as the step's output.
/// `None` when the step is not in place.
pub fn take_in_place(step: &Step, env: &Env<'_>) -> Result<Option<BufferId>> {
    let Some(k) = step.in_place else {
        return Ok(None);
    };
    let (donor, out) = match (step.inputs.get(k), step.outputs.first()) {
        (Some(&d), Some(&o)) => (d, o),
        _ => {
            return Err(Error::Internal(format!(
                "step `{}` in place without operands",
                step.name
            )));
        }
    };
    let buffer = env.take(donor).ok_or_else(|| {
        Error::Internal(format!(
            "in-place donor {donor} of `{}` has no buffer",
            step.name
        ))
    })?;
    tracing::debug!(target: "tensorgraph", "reuse {donor} in place for {out} at {}", step.name);
    Ok(Some(buffer))
}

/// Emits the `run` trace event of a step; backends call it as each starts.
/// When the run records a timeline, this also opens the step's slice (a
/// clock read per step, paid only then).
pub fn trace_run(step: &Step, env: &Env<'_>) {
    if env.recorder.is_some() {
        Recorder::mark_start();
    }
    tracing::debug!(target: "tensorgraph", "run {}", step.name);
}

/// Marks `step` done: frees every value whose last reader it was (on
/// whichever backend holds it) and every result nothing reads, tracing
/// each. Backends call this right after running a step.
///
/// Readers are counted at run time, so frees stay correct when steps of
/// different tasks run concurrently; in a sequential run they happen
/// exactly at the plan's [`Step::free_after`] points. When the run records
/// a timeline, this also closes the step's slice (opened by [`trace_run`]).
pub fn release_after(backend: &dyn Backend, step: &Step, env: &Env<'_>) -> Result<()> {
    if let Some(rec) = env.recorder {
        let track = timeline::track(backend.device().name());
        rec.step_done(&step.name, step.kernel.op.name(), track);
    }
    for &v in &step.outputs {
        if env.readers_left[v.0].load(Ordering::Acquire) == 0 {
            env.free_value(v, step)?;
        }
    }
    for (k, &v) in step.inputs.iter().enumerate() {
        if !step.inputs[..k].contains(&v)
            && env.readers_left[v.0].fetch_sub(1, Ordering::AcqRel) == 1
        {
            env.free_value(v, step)?;
        }
    }
    Ok(())
}
