//! Constant folding: a step whose operands are all constants is evaluated
//! once, at compile time, on the CPU backend, and becomes constants.

use std::sync::Arc;

use crate::backend::{Backend, Kernel};
use crate::passes::{Ir, PassOptions};
use crate::plan::{CompileOptions, Step};
use crate::{Device, Error, Graph, Op, Result, Tensor, Value};

/// Results with more elements than this stay computed at run time: a
/// folded constant is uploaded on every run, so folding a broadcast into a
/// huge array would cost more than it saves.
pub const MAX_FOLDED_ELEMENTS: usize = 1 << 20;

/// Replaces every step whose operands are all constants (and which is not
/// a source, a custom op or a transfer) by one constant step per output,
/// with the same value ids. Steps are visited in topological order, so a
/// chain of constant steps folds fully in one sweep.
///
/// A step the CPU cannot evaluate (an error, an unsupported kernel) is left
/// as it is, so the run reports the error where the node is.
pub fn fold_constants(ir: &mut Ir, cpu: &Arc<dyn Backend>) -> Result<()> {
    let mut constant: Vec<Option<Arc<Value>>> = vec![None; ir.types.len()];
    let mut steps = Vec::with_capacity(ir.steps.len());
    for step in std::mem::take(&mut ir.steps) {
        if let Op::Constant(c) = &step.kernel.op {
            if let Some(&v) = step.outputs.first() {
                constant[v.0] = Some(c.clone());
            }
            steps.push(step);
            continue;
        }
        let operands: Option<Vec<Arc<Value>>> =
            step.inputs.iter().map(|v| constant[v.0].clone()).collect();
        let operands = match operands {
            Some(operands) if foldable(&step) => operands,
            _ => {
                steps.push(step);
                continue;
            }
        };
        match evaluate(&step.kernel, &operands, cpu) {
            Ok(values) => {
                for (&v, value) in step.outputs.iter().zip(values) {
                    tracing::debug!(target: "tensorgraph", "fold: {} ({}) -> constant {v}", step.name, step.kernel.op.name());
                    let value = Arc::new(value);
                    constant[v.0] = Some(value.clone());
                    steps.push(Step {
                        kernel: Kernel {
                            op: Op::Constant(value),
                            inputs: Vec::new(),
                            outputs: vec![ir.types[v.0].clone()],
                        },
                        inputs: Vec::new(),
                        outputs: vec![v],
                        free_after: Vec::new(),
                        ..step.clone()
                    });
                }
            }
            Err(e) => {
                tracing::debug!(target: "tensorgraph", "fold: {} ({}) left to run time: {e}", step.name, step.kernel.op.name());
                steps.push(step);
            }
        }
    }
    ir.steps = steps;
    Ok(())
}

/// Whether a step with constant operands may be evaluated now.
fn foldable(step: &Step) -> bool {
    let op_ok = match &step.kernel.op {
        // Sources have nothing to fold; custom ops may have effects and
        // transfers are the executor's.
        Op::Input { .. } | Op::Constant(_) | Op::Custom(_) | Op::Transfer { .. } => false,
        Op::Unary(_)
        | Op::Binary(_)
        | Op::MatMul
        | Op::Reduce { .. }
        | Op::Layout(_)
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Cast(_) => true,
    };
    op_ok
        && !step.inputs.is_empty()
        && step
            .kernel
            .outputs
            .iter()
            .all(|t| t.shape.numel() <= MAX_FOLDED_ELEMENTS)
}

/// Runs `kernel` on constant operands: a graph of the constants and the op,
/// compiled for the CPU alone with every pass off.
fn evaluate(kernel: &Kernel, operands: &[Arc<Value>], cpu: &Arc<dyn Backend>) -> Result<Vec<Value>> {
    let g = Graph::new();
    let mut consts: Vec<Tensor> = Vec::with_capacity(operands.len());
    for value in operands {
        // Shares the operand's `Arc` rather than copying its elements.
        let op = Op::Constant(value.clone());
        let ty = value.ty();
        let mut out = g.push("constant", &[], move |_, _| Ok((op, vec![ty])))?;
        consts.push(out.swap_remove(0));
    }
    let refs: Vec<&Tensor> = consts.iter().collect();
    let (op, outputs) = (kernel.op.clone(), kernel.outputs.clone());
    let results = g.push(kernel.op.name(), &refs, move |_, _| Ok((op, outputs)))?;
    let options = CompileOptions {
        device: Device::Cpu,
        backends: vec![cpu.clone()],
        passes: PassOptions::none(),
    };
    let refs: Vec<&Tensor> = results.iter().collect();
    let values = g.compile(&refs, &options)?.run(&[])?;
    if values.len() != kernel.outputs.len()
        || values.iter().zip(&kernel.outputs).any(|(v, t)| v.ty() != *t)
    {
        return Err(Error::Internal(format!(
            "{} evaluated to other types than {:?}",
            kernel.op.name(),
            kernel.outputs
        )));
    }
    Ok(values)
}
