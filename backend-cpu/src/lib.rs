//! tensorgraph-cpu: the CPU backend. Host buffers are ndarray arrays held
//! by id; kernels are rayon + ndarray loops, matrix products go through
//! the `gemm` crate. Each segment runs inside one `install` on the
//! backend's own rayon pool.

mod element;
mod elementwise;
mod epilogue;
#[cfg(test)]
mod epilogue_tests;
mod fused;
#[cfg(test)]
mod fused_tests;
mod inplace;
#[cfg(test)]
mod inplace_tests;
mod layout;
mod matmul;
mod pool;
#[cfg(test)]
mod pool_tests;
mod reduce;
mod store;
#[cfg(test)]
mod test_data;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use tensorgraph_core::backend::{release_after, trace_run};
use tensorgraph_core::{
    Backend, BufferId, Device, Env, Error, Kernel, Meter, Op, Result, Segment, Step, TensorType,
    Value,
};

use crate::element::{KResult, PAR_THRESHOLD, dispatch};
use crate::pool::Alloc;
use crate::store::{Held, Store};

/// The CPU backend: a rayon pool and a table of host buffers.
///
/// Thread-safe: several threads may run plans on one backend at once.
#[derive(Debug)]
pub struct CpuBackend {
    /// `None` only if the OS refused to start threads; kernels then run on
    /// the caller's thread and rayon's global pool.
    pool: Option<rayon::ThreadPool>,
    store: Store,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

impl CpuBackend {
    /// A backend with one pool thread per available core.
    pub fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuBackend::with_threads(threads)
    }

    /// A backend whose pool has `threads` threads (at least one).
    pub fn with_threads(threads: usize) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("tensorgraph-cpu-{i}"))
            .build();
        if let Err(e) = &pool {
            tracing::warn!(target: "tensorgraph", "cpu: no thread pool ({e}); running on the caller's threads");
        }
        CpuBackend {
            pool: pool.ok(),
            store: Store::default(),
        }
    }

    /// Vectors taken from the backend's pool of freed buffers (not its
    /// thread pool) since it was made: kernel outputs, and the scratch some
    /// kernels use.
    pub fn pool_hits(&self) -> u64 {
        self.store.pool().hits()
    }

    /// Bytes of freed storage the backend keeps for reuse now.
    pub fn pooled_bytes(&self) -> usize {
        self.store.pool().bytes()
    }

    /// Threads in the backend's pool.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or_else(
            rayon::current_num_threads,
            rayon::ThreadPool::current_num_threads,
        )
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    /// Runs one step: register a source, or compute and store outputs.
    fn run_step(&self, step: &Step, env: &Env<'_>, meter: &Meter) -> Result<()> {
        trace_run(step, env);
        let fail = |message: String| Error::Backend {
            backend: self.name().to_string(),
            node: step.name.clone(),
            message,
        };
        let computed = match &step.kernel.op {
            // A feed outlives the run, so its buffer borrows it instead of
            // copying; it is metered like any upload.
            Op::Input { .. } => {
                for &v in &step.outputs {
                    let bytes = env.feed(v)?.bytes();
                    env.set(v, self.store.insert_feed(v, bytes, meter))?;
                }
                None
            }
            // Constants are immutable and shared: storing the `Arc` costs
            // no copy either.
            Op::Constant(c) => {
                for &v in &step.outputs {
                    env.set(v, self.store.insert(c.clone(), meter))?;
                }
                None
            }
            Op::Fused(_) | Op::Unary(_) | Op::Binary(_) | Op::Cast(_)
                if step.in_place.is_some() =>
            {
                self.run_in_place(step, env, meter)?;
                None
            }
            Op::Unary(_)
            | Op::Binary(_)
            | Op::MatMul
            | Op::Reduce { .. }
            | Op::Layout(_)
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Cast(_)
            | Op::Fused(_)
            | Op::MatMulEpilogue(_)
            | Op::ReducePrologue { .. } => {
                let inputs = self.operands(step, env)?;
                let refs: Vec<&Value> = inputs.iter().map(|v| &**v).collect();
                let alloc = Alloc {
                    pool: Some(self.store.pool()),
                    what: &step.name,
                };
                Some(compute_with(&step.kernel, &refs, alloc).map_err(fail)?)
            }
            Op::Custom(custom) => {
                let inputs = self.operands(step, env)?;
                let refs: Vec<&Value> = inputs.iter().map(|v| &**v).collect();
                Some(run_custom(custom, &refs).map_err(fail)?)
            }
            Op::Transfer { .. } => {
                return Err(fail("transfers are run by the executor".into()));
            }
        };
        if let Some(outputs) = computed {
            check_outputs(&outputs, &step.kernel.outputs).map_err(fail)?;
            for (&v, out) in step.outputs.iter().zip(outputs) {
                env.set(v, self.store.insert(Arc::new(out), meter))?;
            }
        }
        release_after(self, step, env)
    }

    /// The values bound to a step's operands.
    fn operands<'a>(&self, step: &Step, env: &Env<'a>) -> Result<Vec<Held<'a>>> {
        step.inputs
            .iter()
            .map(|&v| self.store.get(env.buffer(v)?, env))
            .collect()
    }

    /// Gives every feed buffer of `segment` that the run returns its own
    /// copy, for `take` (which has no run to borrow from). Later tasks and
    /// transfers read other feed buffers through the run, without a copy.
    fn own_feeds(&self, segment: &Segment<'_>, env: &Env<'_>) -> Result<()> {
        for step in segment.steps {
            if let Op::Input { .. } = step.kernel.op {
                for &v in step.outputs.iter().filter(|&&v| env.is_output(v)) {
                    if let Ok(buffer) = env.buffer(v) {
                        self.store.own_feed(buffer, env)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether every kernel path stays on one thread for `kernel`: each
/// tensor it touches below [`PAR_THRESHOLD`] (the size at which the
/// elementwise, fused and reduction kernels start splitting work), and for
/// matrix products, which split by their work, that too. Judging a fused
/// kernel by its work (elements times instructions) handed segments of a
/// few thousand elements to the pool, which their kernel never split: a
/// wake-up and a wait, several times the kernel's own time.
fn serial(kernel: &Kernel) -> bool {
    let small = |t: &TensorType| t.shape.numel() < PAR_THRESHOLD;
    let own = match &kernel.op {
        // The product splits at m·n·k (times batches) multiply-adds, half
        // its flops.
        Op::MatMul | Op::MatMulEpilogue(_) => {
            kernel.op.flops(&kernel.inputs, &kernel.outputs) / 2 < PAR_THRESHOLD as u64
        }
        Op::ReducePrologue { shape, .. } => shape.numel() < PAR_THRESHOLD,
        _ => true,
    };
    own && kernel.inputs.iter().all(small) && kernel.outputs.iter().all(small)
}

/// Calls a user closure, turning its error or panic into a message.
fn run_custom(custom: &tensorgraph_core::CustomOp, inputs: &[&Value]) -> KResult<Vec<Value>> {
    let call = std::panic::AssertUnwindSafe(|| (custom.func)(inputs));
    match std::panic::catch_unwind(call) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("custom op `{}` failed: {e}", custom.name)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic".into());
            Err(format!("custom op `{}` panicked: {msg}", custom.name))
        }
    }
}

/// A kernel or custom op must return exactly the declared types.
fn check_outputs(outputs: &[Value], declared: &[TensorType]) -> KResult<()> {
    if outputs.len() != declared.len() {
        return Err(format!(
            "returned {} outputs, declared {}",
            outputs.len(),
            declared.len()
        ));
    }
    for (out, ty) in outputs.iter().zip(declared) {
        if out.dtype() != ty.dtype || out.shape() != ty.shape {
            return Err(format!("returned {}, declared {ty}", out.ty()));
        }
    }
    Ok(())
}

/// [`compute_with`] without a pool: every output freshly allocated.
#[cfg(test)]
fn compute(kernel: &Kernel, inputs: &[&Value]) -> KResult<Vec<Value>> {
    compute_with(kernel, inputs, Alloc::NONE)
}

/// Computes one non-source kernel, its outputs taking their storage from
/// `alloc`. The op match is exhaustive: a new op fails to compile
/// here until it has a kernel.
fn compute_with(kernel: &Kernel, inputs: &[&Value], alloc: Alloc<'_>) -> KResult<Vec<Value>> {
    let out_ty = || kernel.outputs.first().ok_or("kernel has no output type");
    match &kernel.op {
        Op::Input { .. } | Op::Constant(_) => Err("sources are uploaded, not computed".into()),
        Op::Custom(_) | Op::Transfer { .. } => Err("not a kernel".into()),
        Op::Fused(expr) => Ok(vec![fused::fused_with(expr, out_ty()?, inputs, alloc)?]),
        Op::MatMulEpilogue(expr) => Ok(vec![epilogue::matmul_epilogue(
            expr,
            out_ty()?,
            inputs,
            alloc,
        )?]),
        Op::ReducePrologue {
            expr,
            shape,
            op,
            axes,
            ..
        } => Ok(vec![fused::reduce_prologue(
            &fused::Prologue {
                expr,
                shape,
                op: *op,
                axes,
                out: out_ty()?,
            },
            inputs,
            alloc,
        )?]),
        Op::Unary(op) => dispatch(&elementwise::Unary(*op), inputs, alloc),
        Op::Binary(op) => dispatch(
            &elementwise::Binary {
                op: *op,
                shape: &out_ty()?.shape,
            },
            inputs,
            alloc,
        ),
        Op::MatMul => dispatch(
            &matmul::MatMul {
                shape: &out_ty()?.shape,
            },
            inputs,
            alloc,
        ),
        Op::Reduce { op, axes, .. } => dispatch(
            &reduce::Reduce {
                op: *op,
                axes,
                shape: &out_ty()?.shape,
            },
            inputs,
            alloc,
        ),
        Op::Layout(op) => dispatch(&layout::Layout(op), inputs, alloc),
        Op::Concat { axis } => dispatch(&layout::Concat(*axis), inputs, alloc),
        Op::Split { axis, sizes } => dispatch(&layout::Split { axis: *axis, sizes }, inputs, alloc),
        Op::Cast(to) => match inputs {
            [x] => Ok(vec![elementwise::cast(x, *to, alloc)?]),
            _ => Err(format!("cast takes 1 operand, got {}", inputs.len())),
        },
    }
}

/// An uninitialised buffer is zeros: cheap, and never undefined.
impl Backend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn supports(&self, _kernel: &Kernel) -> std::result::Result<(), String> {
        Ok(())
    }

    fn alloc(&self, ty: &TensorType, meter: &Meter) -> Result<BufferId> {
        Ok(self.store.insert(Arc::new(Value::zeros(ty)), meter))
    }

    fn free(&self, buffer: BufferId, meter: &Meter) -> Result<()> {
        self.store.remove(buffer, meter)
    }

    fn upload(&self, value: &Value, meter: &Meter) -> Result<BufferId> {
        Ok(self.store.insert(Arc::new(value.clone()), meter))
    }

    fn download(&self, buffer: BufferId) -> Result<Value> {
        Ok(self.store.get_owned(buffer)?.as_ref().clone())
    }

    fn upload_owned(&self, value: Value, meter: &Meter) -> Result<BufferId> {
        Ok(self.store.insert(Arc::new(value), meter))
    }

    /// The value (a borrowed feed included) goes to `to` as it is: no
    /// host copy on the way.
    fn transfer_to(
        &self,
        buffer: BufferId,
        env: &Env<'_>,
        to: &dyn Backend,
        meter: &Meter,
    ) -> Result<BufferId> {
        let value = self.store.get(buffer, env)?;
        to.upload(&value, meter)
    }

    fn take(&self, buffer: BufferId, meter: &Meter) -> Result<Value> {
        self.store.take(buffer, meter)
    }

    /// The slot's storage goes to the pool, where this run's kernels draw
    /// their outputs from; the default `take_into` then moves the result
    /// into the slot without a copy.
    fn recycle(&self, slot: &mut Value) {
        // A zero-element array allocates nothing.
        let empty = Value::zeros(&TensorType::new(slot.dtype(), [0]));
        let old = std::mem::replace(slot, empty);
        self.store.pool().put(old);
    }

    fn execute(&self, segment: &Segment<'_>, env: &Env<'_>) -> Result<()> {
        // A custom op may block (I/O, sleeps): it runs on the caller's
        // thread, so it never holds a pool thread others need.
        if let [step] = segment.steps
            && matches!(step.kernel.op, Op::Custom(_))
        {
            return self.run_step(step, env, segment.meter);
        }
        let run = || {
            segment
                .steps
                .iter()
                .try_for_each(|step| self.run_step(step, env, segment.meter))
        };
        // A segment of small kernels runs on the caller's thread: handing
        // it to the pool (a wake-up and a wait) would cost more than it.
        if segment.steps.iter().all(|s| serial(&s.kernel)) {
            run()?;
        } else {
            self.install(run)?;
        }
        self.own_feeds(segment, env)
    }

    fn supports_in_place(&self, kernel: &Kernel) -> bool {
        inplace::supports(kernel)
    }

    fn synchronize(&self) -> Result<()> {
        // Every kernel has finished when `execute` returns.
        Ok(())
    }

    fn live_buffers(&self) -> usize {
        self.store.len()
    }
}
