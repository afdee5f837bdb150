//! Constant folding: steps whose operands are all constants are evaluated
//! once, at compile time, on the CPU backend, and become constants.

use std::sync::Arc;

use crate::backend::{Backend, Kernel};
use crate::passes::{Ir, PassOptions};
use crate::plan::{CompileOptions, Step, ValueId};
use crate::{Device, Error, Graph, Op, Result, Tensor, Value};

/// Results with more elements than this stay computed at run time: a
/// folded constant is uploaded on every run, so folding a broadcast into a
/// huge array would cost more than it saves.
pub const MAX_FOLDED_ELEMENTS: usize = 1 << 20;

/// Evaluates every step whose operands are constants or results of such
/// steps (transitively, so chains fold whole), unless it is a source, a
/// custom op, a transfer, or has a result over [`MAX_FOLDED_ELEMENTS`].
///
/// The foldable steps are evaluated together, as one small plan on `cpu`.
/// Each result that a remaining step reads, or that was requested, becomes
/// a constant step with the same value id (a multi-output step becomes one
/// constant per result it hands out); the other folded steps disappear.
///
/// If that plan fails, steps are evaluated one at a time, and a step whose
/// evaluation fails stays, so the run reports its error where it belongs.
pub fn fold_constants(ir: &mut Ir, cpu: &Arc<dyn Backend>) -> Result<()> {
    let mut constant: Vec<Option<Arc<Value>>> = vec![None; ir.types.len()];
    let mut known = vec![false; ir.types.len()];
    let mut folded = vec![false; ir.steps.len()];
    for (i, step) in ir.steps.iter().enumerate() {
        if let (Op::Constant(c), &[v]) = (&step.kernel.op, &step.outputs[..]) {
            constant[v.0] = Some(c.clone());
            known[v.0] = true;
        } else if foldable(step) && step.inputs.iter().all(|v| known[v.0]) {
            folded[i] = true;
            for v in &step.outputs {
                known[v.0] = true;
            }
        }
    }
    // The results the folded steps must hand out: read by a step that
    // stays, or requested.
    let mut wanted = vec![false; ir.types.len()];
    for (step, _) in ir.steps.iter().zip(&folded).filter(|(_, f)| !**f) {
        for v in &step.inputs {
            wanted[v.0] = true;
        }
    }
    for v in &ir.outputs {
        wanted[v.0] = true;
    }
    let handed_out: Vec<ValueId> = ir
        .steps
        .iter()
        .zip(&folded)
        .filter(|(_, f)| **f)
        .flat_map(|(s, _)| s.outputs.iter().copied())
        .filter(|v| wanted[v.0])
        .collect();
    if handed_out.is_empty() {
        return Ok(());
    }
    match evaluate(&ir.steps, &folded, &constant, &handed_out, cpu) {
        Ok(values) => {
            let mut value: Vec<Option<Arc<Value>>> = vec![None; ir.types.len()];
            for (v, x) in handed_out.iter().zip(values) {
                value[v.0] = Some(Arc::new(x));
            }
            let steps = std::mem::take(&mut ir.steps);
            ir.steps = Vec::with_capacity(steps.len());
            for (step, fold) in steps.into_iter().zip(folded) {
                if !fold {
                    ir.steps.push(step);
                    continue;
                }
                for &v in &step.outputs {
                    if let Some(x) = value[v.0].take() {
                        ir.steps.push(constant_step(&step, v, x));
                    }
                }
            }
        }
        Err(e) => {
            tracing::debug!(target: "tensorgraph", "fold: the constant steps fail together ({e}); folding them one at a time");
            fold_one_at_a_time(ir, cpu);
        }
    }
    Ok(())
}

/// The fallback: each step whose operands are constants is evaluated
/// alone, in topological order; one that fails stays as it is.
fn fold_one_at_a_time(ir: &mut Ir, cpu: &Arc<dyn Backend>) {
    let mut constant: Vec<Option<Arc<Value>>> = vec![None; ir.types.len()];
    let steps = std::mem::take(&mut ir.steps);
    ir.steps = Vec::with_capacity(steps.len());
    for step in steps {
        if let (Op::Constant(c), &[v]) = (&step.kernel.op, &step.outputs[..]) {
            constant[v.0] = Some(c.clone());
        }
        let all_constant = step.inputs.iter().all(|v| constant[v.0].is_some());
        if !(foldable(&step) && all_constant) {
            ir.steps.push(step);
            continue;
        }
        match evaluate(
            std::slice::from_ref(&step),
            &[true],
            &constant,
            &step.outputs,
            cpu,
        ) {
            Ok(values) => {
                for (&v, x) in step.outputs.iter().zip(values) {
                    let x = Arc::new(x);
                    constant[v.0] = Some(x.clone());
                    ir.steps.push(constant_step(&step, v, x));
                }
            }
            Err(e) => {
                tracing::debug!(target: "tensorgraph", "fold: {} ({}) left to run time: {e}", step.name, step.kernel.op.name());
                ir.steps.push(step);
            }
        }
    }
}

/// A constant step standing for result `v` of `step`, keeping its name,
/// node, location and pin.
fn constant_step(step: &Step, v: ValueId, x: Arc<Value>) -> Step {
    tracing::debug!(target: "tensorgraph", "fold: {} ({}) -> constant {v}", step.name, step.kernel.op.name());
    let ty = x.ty();
    Step {
        kernel: Kernel {
            op: Op::Constant(x),
            inputs: Vec::new(),
            outputs: vec![ty],
        },
        inputs: Vec::new(),
        outputs: vec![v],
        free_after: Vec::new(),
        ..step.clone()
    }
}

/// Whether a step may be evaluated at compile time once its operands are
/// known.
fn foldable(step: &Step) -> bool {
    let op_ok = match &step.kernel.op {
        // Sources have nothing to fold; custom ops may have effects, and
        // transfers are the executor's.
        Op::Input { .. } | Op::Constant(_) | Op::Custom(_) | Op::Transfer { .. } => false,
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
        | Op::ReducePrologue { .. } => true,
    };
    op_ok
        && !step.inputs.is_empty()
        && step
            .kernel
            .outputs
            .iter()
            .all(|t| t.shape.numel() <= MAX_FOLDED_ELEMENTS)
}

/// Runs the steps marked in `fold` (with constant operands, or operands
/// from each other) as one plan on the CPU alone, every pass off, and
/// returns the values of `wanted`, in order.
fn evaluate(
    steps: &[Step],
    fold: &[bool],
    constant: &[Option<Arc<Value>>],
    wanted: &[ValueId],
    cpu: &Arc<dyn Backend>,
) -> Result<Vec<Value>> {
    let g = Graph::new();
    let mut tensor: Vec<Option<Tensor>> = vec![None; constant.len()];
    for (step, _) in steps.iter().zip(fold).filter(|(_, f)| **f) {
        let mut operands = Vec::with_capacity(step.inputs.len());
        for v in &step.inputs {
            if tensor[v.0].is_none() {
                let c = constant[v.0]
                    .clone()
                    .ok_or_else(|| Error::Internal(format!("fold: {v} is not a constant")))?;
                // Shares the constant's `Arc` rather than copying it.
                let ty = c.ty();
                let t = g.push("constant", &[], move |_, _| Ok((Op::Constant(c), vec![ty])))?;
                tensor[v.0] = t.into_iter().next();
            }
            operands.push(
                tensor[v.0]
                    .clone()
                    .ok_or_else(|| Error::Internal(format!("fold: no tensor for {v}")))?,
            );
        }
        let refs: Vec<&Tensor> = operands.iter().collect();
        let (op, outputs) = (step.kernel.op.clone(), step.kernel.outputs.clone());
        let results = g.push(step.kernel.op.name(), &refs, move |_, _| Ok((op, outputs)))?;
        for (v, t) in step.outputs.iter().zip(results) {
            tensor[v.0] = Some(t);
        }
    }
    let wanted_tensors: Vec<&Tensor> = wanted
        .iter()
        .map(|v| {
            tensor[v.0]
                .as_ref()
                .ok_or_else(|| Error::Internal(format!("fold: {v} was not evaluated")))
        })
        .collect::<Result<_>>()?;
    let options = CompileOptions {
        passes: PassOptions::none(),
        ..CompileOptions::new(Device::Cpu, vec![cpu.clone()])
    };
    let values = g.compile(&wanted_tensors, &options)?.run(&[])?;
    for (v, x) in wanted.iter().zip(&values) {
        let expected = tensor[v.0].as_ref().map(|t| t.ty());
        if Some(&x.ty()) != expected {
            return Err(Error::Internal(format!(
                "fold: {v} evaluated to {}, not {expected:?}",
                x.ty()
            )));
        }
    }
    if values.len() != wanted.len() {
        return Err(Error::Internal(
            "fold: the plan returned too few values".into(),
        ));
    }
    Ok(values)
}
