//! Running a segment: every step recorded into one encoder, submitted once
//! without waiting. Validation and out-of-memory errors of the whole
//! segment are caught in error scopes and returned as `Err`.

use tensorgraph_core::backend::{Env, Meter, Segment, release_after, take_in_place, trace_run};
use tensorgraph_core::{Backend, BufferId, Kernel, LayoutOp, Op, Result, Step, TensorType};

use crate::WgpuBackend;
use crate::epilogue::MatMulProgram;
use crate::fused::FusedProgram;
use crate::kernels::{Operand, elementwise, fused, layout, matmul, reduce};
use crate::prologue;
use crate::record::Recorder;

impl WgpuBackend {
    pub(crate) fn run_segment(&self, segment: &Segment<'_>, env: &Env<'_>) -> Result<()> {
        let _recording = self
            .recording
            .lock()
            .map_err(|_| self.error("execute", "recording lock poisoned".into()))?;
        let device = &self.gpu.device;
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.pool
            .begin_recording()
            .map_err(|m| self.error("execute", m))?;
        let mut rec = Recorder::new(&self.gpu, &self.pipelines);
        let mut last = "execute";
        let mut result = Ok(());
        for step in segment.steps {
            last = &step.name;
            trace_run(step, env);
            result = self
                .record_step(&mut rec, step, env, segment.meter)
                .and_then(|()| release_after(self, step, env));
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = rec.submit().map_err(|m| self.error(last, m));
        }
        let ended = self
            .pool
            .end_recording()
            .map_err(|m| self.error("execute", m));
        let oom = pollster::block_on(oom.pop());
        let validation = pollster::block_on(validation.pop());
        result?;
        ended?;
        match oom.or(validation) {
            None => Ok(()),
            Some(e) => Err(self.error(last, format!("the GPU rejected the segment: {e}"))),
        }
    }

    /// Runs one `kernel` outside any plan, on buffers this backend holds:
    /// fresh output buffers come back (reported to `meter`), submitted
    /// without waiting. For tests and benchmarks of single kernels, such
    /// as fused programs, which no graph builder makes directly.
    pub fn run_kernel(
        &self,
        kernel: &Kernel,
        inputs: &[BufferId],
        meter: &Meter,
    ) -> Result<Vec<BufferId>> {
        let fail = |m: String| self.error(kernel.op.name(), m);
        self.supports(kernel).map_err(fail)?;
        let _recording = self
            .recording
            .lock()
            .map_err(|_| fail("recording lock poisoned".into()))?;
        let device = &self.gpu.device;
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut xs = Vec::with_capacity(inputs.len());
        for &id in inputs {
            let slot = self.pool.get(id).map_err(fail)?;
            xs.push(Operand {
                buffer: slot.buffer,
                ty: slot.ty,
            });
        }
        let mut ids = Vec::with_capacity(kernel.outputs.len());
        let mut ys = Vec::with_capacity(kernel.outputs.len());
        for ty in &kernel.outputs {
            let (id, buffer) = self.pool.alloc(ty, false).map_err(fail)?;
            meter.alloc(ty.bytes());
            ids.push(id);
            ys.push(Operand {
                buffer,
                ty: ty.clone(),
            });
        }
        let mut rec = Recorder::new(&self.gpu, &self.pipelines);
        let result = lower(&mut rec, &kernel.op, &xs, &ys, None).and_then(|()| rec.submit());
        let result = match (result, pollster::block_on(validation.pop())) {
            (Err(m), _) => Err(m),
            (Ok(()), Some(e)) => Err(format!("the GPU rejected the kernel: {e}")),
            (Ok(()), None) => return Ok(ids),
        };
        // Give the outputs back before reporting the failure.
        for (&id, ty) in ids.iter().zip(&kernel.outputs) {
            if self.pool.free(id).is_ok() {
                meter.free(ty.bytes());
            }
        }
        result.map(|()| ids).map_err(fail)
    }

    /// Records one step: uploads for sources, dispatches for the rest. A
    /// step planned in place takes its donor operand's buffer over as its
    /// output: no allocation, and the donor is not freed (the buffer only
    /// changes owner, of the very same type, so the pool's record holds).
    fn record_step(
        &self,
        rec: &mut Recorder<'_>,
        step: &Step,
        env: &Env<'_>,
        meter: &Meter,
    ) -> Result<()> {
        let fail = |m: String| self.error(&step.name, m);
        let k = &step.kernel;
        match &k.op {
            Op::Input { .. } | Op::Constant(_) => {
                let out = *step
                    .outputs
                    .first()
                    .ok_or_else(|| fail("no output".into()))?;
                let value = match &k.op {
                    Op::Constant(v) => v.as_ref(),
                    _ => env.feed(out)?,
                };
                let id = self.upload_value(value, meter).map_err(fail)?;
                return env.set(out, id);
            }
            _ => {}
        }
        let mut inputs = Vec::with_capacity(step.inputs.len());
        for &v in &step.inputs {
            let slot = self.pool.get(env.buffer(v)?).map_err(fail)?;
            inputs.push(Operand {
                buffer: slot.buffer,
                ty: slot.ty,
            });
        }
        // A lone elementwise op runs in place as a one-op program, made
        // before the donor changes owner.
        let program = step
            .in_place
            .map(|_| {
                k.elementwise_program()
                    .ok_or_else(|| fail(format!("{} does not run in place", k.op.name())))
            })
            .transpose()?;
        // After the operands are bound: the donor leaves the table here.
        if let (Some(program), Some(id)) = (program, take_in_place(step, env)?) {
            let (Some(&out), Some(ty), [_]) =
                (step.outputs.first(), k.outputs.first(), &step.outputs[..])
            else {
                return Err(fail("in place with other than one output".into()));
            };
            let slot = self.pool.get(id).map_err(fail)?;
            if slot.ty != *ty {
                return Err(fail(format!(
                    "in-place buffer holds {}, the result is {ty}",
                    slot.ty
                )));
            }
            env.set(out, id)?;
            let y = Operand {
                buffer: slot.buffer,
                ty: ty.clone(),
            };
            return lower(rec, &Op::Fused(program), &inputs, &[y], step.in_place).map_err(fail);
        }
        let mut outputs = Vec::with_capacity(step.outputs.len());
        for (&v, ty) in step.outputs.iter().zip(&k.outputs) {
            let (id, buffer) = self.pool.alloc(ty, false).map_err(fail)?;
            meter.alloc(ty.bytes());
            env.set(v, id)?;
            outputs.push(Operand {
                buffer,
                ty: ty.clone(),
            });
        }
        lower(rec, &k.op, &inputs, &outputs, None).map_err(fail)
    }
}

fn nth(xs: &[Operand], i: usize) -> std::result::Result<&Operand, String> {
    xs.get(i).ok_or_else(|| format!("missing operand {i}"))
}

/// The one exhaustive match from ops to kernels. `in_place` names the
/// operand whose buffer `ys[0]` is (only fused kernels run in place; a
/// lone elementwise op comes here as a one-op program).
fn lower(
    rec: &mut Recorder<'_>,
    op: &Op,
    xs: &[Operand],
    ys: &[Operand],
    in_place: Option<usize>,
) -> std::result::Result<(), String> {
    let y = nth(ys, 0)?;
    if in_place.is_some() && !matches!(op, Op::Fused(_)) {
        return Err(format!("{} does not run in place", op.name()));
    }
    match op {
        Op::Input { .. } | Op::Constant(_) => Err("sources are uploaded, not dispatched".into()),
        Op::Custom(_) | Op::Transfer { .. } => Err("not a GPU kernel".into()),
        Op::MatMulEpilogue(expr) => {
            let types: Vec<TensorType> = xs.iter().map(|x| x.ty.clone()).collect();
            let program = MatMulProgram::epilogue(expr, &types, &y.ty)?;
            matmul::matmul(rec, program, nth(xs, 0)?, nth(xs, 1)?, &xs[2..], y)
        }
        Op::ReducePrologue {
            expr,
            shape,
            op,
            axes,
            keep_dims: _,
        } => {
            let types: Vec<TensorType> = xs.iter().map(|x| x.ty.clone()).collect();
            let reduced = TensorType::new(y.ty.dtype, shape.dims().to_vec());
            let program = FusedProgram::new(expr, &types, &reduced)?;
            reduce::reduce(rec, *op, axes, program, xs, shape.dims(), y)
        }
        Op::Fused(expr) => fused::fused(rec, expr, xs, y, in_place),
        Op::Unary(u) => elementwise::unary(rec, *u, nth(xs, 0)?, y),
        Op::Binary(b) => elementwise::binary(rec, *b, nth(xs, 0)?, nth(xs, 1)?, y),
        Op::Cast(to) => elementwise::cast(rec, *to, nth(xs, 0)?, y),
        Op::MatMul => {
            let program = MatMulProgram::plain(y.ty.dtype);
            matmul::matmul(rec, program, nth(xs, 0)?, nth(xs, 1)?, &[], y)
        }
        Op::Reduce {
            op,
            axes,
            keep_dims: _,
        } => {
            let x = nth(xs, 0)?;
            let program = prologue::identity(x.ty.dtype)?;
            reduce::reduce(rec, *op, axes, program, &xs[..1], x.dims(), y)
        }
        Op::Layout(l) => match l {
            LayoutOp::Reshape(_) => {
                layout::reshape(rec, nth(xs, 0)?, y);
                Ok(())
            }
            LayoutOp::Permute(perm) => layout::permute(rec, perm, nth(xs, 0)?, y),
            LayoutOp::BroadcastTo(_) => layout::broadcast_to(rec, nth(xs, 0)?, y),
            LayoutOp::Slice(ranges) => layout::slice(rec, ranges, nth(xs, 0)?, y),
        },
        Op::Concat { axis } => layout::concat(rec, *axis, xs, y),
        Op::Split { axis, sizes: _ } => layout::split(rec, *axis, nth(xs, 0)?, ys),
    }
}
