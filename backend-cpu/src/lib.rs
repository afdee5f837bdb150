//! tensorgraph-cpu: the CPU backend. Host buffers are ndarray arrays held
//! by id; kernels are rayon + ndarray loops, matrix products go through
//! the `gemm` crate. Each segment runs inside one `install` on the
//! backend's own rayon pool.

// `tensorgraph_core::Error` is large (its `Ctx` and shapes are inline);
// whether to box it is core's decision, and every `Result` here is core's.
#![allow(clippy::result_large_err)]

mod element;
mod elementwise;
mod layout;
mod matmul;
mod reduce;
mod store;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use tensorgraph_core::backend::{release_after, trace_run};
use tensorgraph_core::{
    Backend, BufferId, DType, Device, Env, Error, Kernel, Meter, Op, Result, Segment, Step,
    TensorType, Value,
};

use crate::element::{KResult, dispatch};
use crate::store::Store;

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

    /// Runs one step: upload for sources, else compute and store outputs.
    fn run_step(&self, step: &Step, env: &Env<'_>, meter: &Meter) -> Result<()> {
        trace_run(step);
        let fail = |message: String| Error::Backend {
            backend: self.name().to_string(),
            node: step.name.clone(),
            message,
        };
        let first = || {
            step.outputs
                .first()
                .copied()
                .ok_or_else(|| Error::Internal(format!("step `{}` has no output", step.name)))
        };
        match &step.kernel.op {
            Op::Input { .. } => {
                let v = first()?;
                let id = self.upload(env.feed(v)?, meter)?;
                env.set(v, id)?;
            }
            // Constants are immutable and shared: storing the `Arc` costs
            // no copy, though the buffer is metered like any upload.
            Op::Constant(c) => {
                let v = first()?;
                env.set(v, self.store.insert(c.clone(), meter))?;
            }
            Op::Unary(_)
            | Op::Binary(_)
            | Op::MatMul
            | Op::Reduce { .. }
            | Op::Layout(_)
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Cast(_) => {
                let inputs = step
                    .inputs
                    .iter()
                    .map(|&v| self.store.get(env.buffer(v)?))
                    .collect::<Result<Vec<_>>>()?;
                let refs: Vec<&Value> = inputs.iter().map(|v| v.as_ref()).collect();
                let outputs = compute(&step.kernel, &refs).map_err(fail)?;
                drop(inputs);
                if outputs.len() != step.outputs.len() {
                    return Err(fail(format!(
                        "produced {} outputs, expected {}",
                        outputs.len(),
                        step.outputs.len()
                    )));
                }
                for ((&v, out), ty) in step.outputs.iter().zip(outputs).zip(&step.kernel.outputs) {
                    if out.dtype() != ty.dtype || out.shape() != ty.shape {
                        return Err(fail(format!("produced {}, expected {ty}", out.ty())));
                    }
                    env.set(v, self.store.insert(Arc::new(out), meter))?;
                }
            }
        }
        release_after(self, step, env, meter)
    }
}

/// Computes one non-source kernel. The op match is exhaustive: a new op
/// fails to compile here until it has a kernel.
fn compute(kernel: &Kernel, inputs: &[&Value]) -> KResult<Vec<Value>> {
    let out_ty = || kernel.outputs.first().ok_or("kernel has no output type");
    match &kernel.op {
        Op::Input { .. } | Op::Constant(_) => Err("sources are uploaded, not computed".into()),
        Op::Unary(op) => dispatch(&elementwise::Unary(*op), inputs),
        Op::Binary(op) => dispatch(
            &elementwise::Binary {
                op: *op,
                shape: &out_ty()?.shape,
            },
            inputs,
        ),
        Op::MatMul => dispatch(
            &matmul::MatMul {
                shape: &out_ty()?.shape,
            },
            inputs,
        ),
        Op::Reduce { op, axes, .. } => dispatch(
            &reduce::Reduce {
                op: *op,
                axes,
                shape: &out_ty()?.shape,
            },
            inputs,
        ),
        Op::Layout(op) => dispatch(&layout::Layout(op), inputs),
        Op::Concat { axis } => dispatch(&layout::Concat(*axis), inputs),
        Op::Split { axis, sizes } => dispatch(&layout::Split { axis: *axis, sizes }, inputs),
        Op::Cast(to) => match inputs {
            [x] => Ok(vec![elementwise::cast(x, *to)?]),
            _ => Err(format!("cast takes 1 operand, got {}", inputs.len())),
        },
    }
}

/// An uninitialised buffer is zeros: cheap, and never undefined.
fn zeros(ty: &TensorType) -> Value {
    let dims = ndarray::IxDyn(ty.shape.dims());
    match ty.dtype {
        DType::F32 => Value::F32(ndarray::ArrayD::zeros(dims)),
        DType::I32 => Value::I32(ndarray::ArrayD::zeros(dims)),
    }
}

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
        Ok(self.store.insert(Arc::new(zeros(ty)), meter))
    }

    fn free(&self, buffer: BufferId, meter: &Meter) -> Result<()> {
        self.store.remove(buffer, meter)
    }

    fn upload(&self, value: &Value, meter: &Meter) -> Result<BufferId> {
        Ok(self.store.insert(Arc::new(value.clone()), meter))
    }

    fn download(&self, buffer: BufferId) -> Result<Value> {
        Ok(self.store.get(buffer)?.as_ref().clone())
    }

    fn execute(&self, segment: &Segment<'_>, env: &Env<'_>) -> Result<()> {
        self.install(|| {
            segment
                .steps
                .iter()
                .try_for_each(|step| self.run_step(step, env, segment.meter))
        })
    }

    fn synchronize(&self) -> Result<()> {
        // Every kernel has finished when `execute` returns.
        Ok(())
    }

    fn live_buffers(&self) -> usize {
        self.store.len()
    }
}
