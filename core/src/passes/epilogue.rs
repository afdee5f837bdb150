//! Epilogue and prologue fusion: an elementwise step (fused or single)
//! whose only operand of interest is a matmul result becomes the matmul's
//! epilogue, applied as each output is stored; an elementwise step read
//! only by a reduction becomes its prologue, evaluated as each element is
//! loaded. Either way one tensor is never written to memory.

use std::sync::Arc;

use crate::Op;
use crate::fused::{FusedExpr, Instr};
use crate::passes::{Ir, OperandCaps};
use crate::plan::{Step, ValueId};

/// The program of an elementwise step (see [`Kernel::elementwise_program`])
/// over its distinct operands (returned alongside, in kernel operand
/// order): `x * x` reads one operand twice.
///
/// [`Kernel::elementwise_program`]: crate::Kernel::elementwise_program
fn program_of(step: &Step) -> Option<(FusedExpr, Vec<ValueId>)> {
    let expr = step.kernel.elementwise_program()?;
    let mut operands: Vec<ValueId> = Vec::with_capacity(step.inputs.len());
    let map: Vec<usize> = step
        .inputs
        .iter()
        .map(|&v| {
            operands.iter().position(|&u| u == v).unwrap_or_else(|| {
                operands.push(v);
                operands.len() - 1
            })
        })
        .collect();
    Some((remap(&expr, &map), operands))
}

/// Renumbers a program's inputs: operand `old` becomes `map[old]`.
fn remap(expr: &FusedExpr, map: &[usize]) -> FusedExpr {
    FusedExpr {
        instrs: expr
            .instrs
            .iter()
            .map(|i| match *i {
                Instr::Input(k) => Instr::Input(map[k]),
                other => other,
            })
            .collect(),
        dtypes: expr.dtypes.clone(),
    }
}

/// Folds elementwise tails into matmuls and heads into reductions, with
/// the operand caps within WebGPU's default 8 storage buffers
/// ([`OperandCaps::default`]); plans use their backends' own limits.
pub fn fuse_epilogues(ir: &mut Ir) {
    fuse_epilogues_with_caps(ir, OperandCaps::default());
}

/// Folds elementwise tails into matmuls (at most `caps.epilogue` operands
/// besides the matrices) and heads into reductions (at most `caps.fused`
/// operands).
pub fn fuse_epilogues_with_caps(ir: &mut Ir, caps: OperandCaps) {
    let values = ir.types.len();
    let mut producer = vec![usize::MAX; values];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); values];
    for (i, s) in ir.steps.iter().enumerate() {
        for &v in &s.outputs {
            producer[v.0] = i;
        }
        for &v in &s.inputs {
            if readers[v.0].last() != Some(&i) {
                readers[v.0].push(i);
            }
        }
    }
    for &v in &ir.outputs {
        readers[v.0].push(usize::MAX); // requested: never fused away
    }
    let single_reader = |v: ValueId, at: usize| readers[v.0] == [at];
    let mut removed = vec![false; ir.steps.len()];
    for i in 0..ir.steps.len() {
        let step = &ir.steps[i];
        match &step.kernel.op {
            // An elementwise step reading a matmul result only it reads.
            Op::Fused(_) | Op::Unary(_) | Op::Binary(_) | Op::Cast(_) => {
                let Some((expr, operands)) = program_of(step) else {
                    continue;
                };
                let out_ty = &ir.types[step.outputs[0].0];
                let product = operands.iter().position(|&v| {
                    let p = producer[v.0];
                    p != usize::MAX
                        && !removed[p]
                        && matches!(ir.steps[p].kernel.op, Op::MatMul)
                        && ir.steps[p].pin == step.pin
                        && single_reader(v, i)
                        && ir.types[v.0].shape == out_ty.shape
                        && operands.iter().filter(|&&u| u == v).count() == 1
                });
                let Some(pos) = product else { continue };
                if operands.len() - 1 > caps.epilogue {
                    continue;
                }
                let m = producer[operands[pos].0];
                let mut map = vec![0; operands.len()];
                let mut inputs = ir.steps[m].inputs.clone();
                let mut kernel_inputs = ir.steps[m].kernel.inputs.clone();
                for (k, &v) in operands.iter().enumerate() {
                    if k != pos {
                        map[k] = inputs.len() - 1;
                        inputs.push(v);
                        kernel_inputs.push(ir.types[v.0].clone());
                    }
                }
                let expr = remap(&expr, &map);
                tracing::debug!(target: "tensorgraph", "epilogue: {} into {}", step.name, ir.steps[m].name);
                let fused = Step {
                    name: format!("{}_epilogue", ir.steps[m].name),
                    kernel: crate::backend::Kernel {
                        op: Op::MatMulEpilogue(Arc::new(expr)),
                        inputs: kernel_inputs,
                        outputs: step.kernel.outputs.clone(),
                    },
                    inputs,
                    ..step.clone()
                };
                ir.steps[i] = fused;
                removed[m] = true;
            }
            // A reduction of an elementwise result only it reads.
            Op::Reduce {
                op,
                axes,
                keep_dims,
            } => {
                let Some(&v) = step.inputs.first() else {
                    continue;
                };
                let e = producer[v.0];
                if e == usize::MAX
                    || removed[e]
                    || !single_reader(v, i)
                    || ir.steps[e].pin != step.pin
                {
                    continue;
                }
                let Some((expr, operands)) = program_of(&ir.steps[e]) else {
                    continue;
                };
                if operands.len() > caps.fused {
                    continue;
                }
                tracing::debug!(target: "tensorgraph", "prologue: {} into {}", ir.steps[e].name, step.name);
                let op = Op::ReducePrologue {
                    expr: Arc::new(expr),
                    shape: ir.types[v.0].shape.clone(),
                    op: *op,
                    axes: axes.clone(),
                    keep_dims: *keep_dims,
                };
                let fused = Step {
                    kernel: crate::backend::Kernel {
                        op,
                        inputs: operands.iter().map(|u| ir.types[u.0].clone()).collect(),
                        outputs: step.kernel.outputs.clone(),
                    },
                    inputs: operands,
                    ..step.clone()
                };
                ir.steps[i] = fused;
                removed[e] = true;
            }
            _ => {}
        }
    }
    let mut flags = removed.into_iter();
    ir.steps.retain(|_| !flags.next().unwrap_or(false));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::{count, lower};
    use crate::passes::{dce::eliminate_dead_code, fuse::fuse_elementwise};
    use crate::{DType, Graph};

    #[test]
    fn bias_and_activation_become_the_matmul_epilogue() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4, 8]).expect("x");
        let w = g.input("w", DType::F32, [8, 3]).expect("w");
        let b = g.input("b", DType::F32, [3]).expect("b");
        let y = x
            .matmul(&w)
            .and_then(|t| t.add(&b))
            .and_then(|t| t.relu())
            .expect("y");
        let mut ir = lower(&g, &[&y]);
        fuse_elementwise(&mut ir);
        fuse_epilogues(&mut ir);
        eliminate_dead_code(&mut ir);
        assert_eq!(count(&ir, "matmul_epilogue"), 1, "{:?}", ir.steps);
        assert_eq!(count(&ir, "matmul") + count(&ir, "fused"), 0);
        let step = ir
            .steps
            .iter()
            .find(|s| matches!(s.kernel.op, Op::MatMulEpilogue(_)))
            .expect("step");
        assert_eq!(step.inputs.len(), 3, "x, w, then the bias");
        assert_eq!(ir.outputs, step.outputs);
    }

    #[test]
    fn a_requested_product_keeps_its_matmul() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4, 8]).expect("x");
        let w = g.input("w", DType::F32, [8, 3]).expect("w");
        let p = x.matmul(&w).expect("p");
        let y = p.relu().expect("y");
        let mut ir = lower(&g, &[&y, &p]);
        fuse_epilogues(&mut ir);
        assert_eq!(count(&ir, "matmul_epilogue"), 0);
        assert_eq!(count(&ir, "matmul"), 1);
    }

    #[test]
    fn an_elementwise_head_becomes_the_reduction_prologue() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [5, 7]).expect("x");
        let s = x
            .exp()
            .and_then(|t| t.mul(&x))
            .and_then(|t| t.sum(&[1], false))
            .expect("s");
        let mut ir = lower(&g, &[&s]);
        fuse_elementwise(&mut ir);
        fuse_epilogues(&mut ir);
        let step = ir
            .steps
            .iter()
            .find(|s| matches!(s.kernel.op, Op::ReducePrologue { .. }))
            .expect("prologue step");
        assert_eq!(step.inputs.len(), 1, "x once");
        assert_eq!(count(&ir, "fused"), 0);
    }
}
