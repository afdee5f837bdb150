//! Algebraic simplification: identities that make a step unnecessary or
//! shorten a chain of layout ops.

use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};

use crate::passes::fold::MAX_FOLDED_ELEMENTS;
use crate::passes::{Ir, Replacements};
use crate::plan::ValueId;
use crate::{BinaryOp, DType, LayoutOp, Op, UnaryOp, Value};

/// What to do with one step.
enum Rewrite {
    /// Its result is this existing value: readers read that instead.
    Replace(ValueId, &'static str),
    /// It computes the same result with this op from these operands.
    Become(Op, Vec<ValueId>, &'static str),
}

/// Applies, in one sweep in topological order (so chains collapse):
///
/// - `x * 1`, `1 * x`, `x + 0`, `0 + x`, `x - 0`, `x / 1` become `x` when
///   the constant is all ones (zeros) and the result has `x`'s type
///   (a broadcast that grows `x` is kept);
/// - `x * 0` and `0 * x` become zeros on `i32` (on `f32`, `inf * 0` is NaN);
/// - `-(-x)` becomes `x`;
/// - a reshape of a reshape becomes one reshape, and a reshape to `x`'s
///   own shape becomes `x`;
/// - a permute of a permute becomes one permute, and an identity
///   permutation becomes `x`.
///
/// Replaced steps are dropped; steps left without readers (the inner
/// reshape of a chain) are left to dead-code elimination.
pub fn simplify(ir: &mut Ir) {
    let mut producer = vec![usize::MAX; ir.types.len()];
    for (i, step) in ir.steps.iter().enumerate() {
        for v in &step.outputs {
            producer[v.0] = i;
        }
    }
    let mut replace = Replacements::new(ir.types.len());
    let mut removed = vec![false; ir.steps.len()];
    for (i, gone) in removed.iter_mut().enumerate() {
        replace.apply_to_step(&mut ir.steps[i]);
        match rewrite(ir, &producer, i) {
            None => {}
            Some(Rewrite::Replace(x, rule)) => {
                let step = &ir.steps[i];
                for &out in &step.outputs {
                    tracing::debug!(target: "tensorgraph", "simplify: {} ({rule}): {out} -> {x}", step.name);
                    replace.set(out, x);
                }
                *gone = true;
            }
            Some(Rewrite::Become(op, inputs, rule)) => {
                let step = &mut ir.steps[i];
                tracing::debug!(target: "tensorgraph", "simplify: {} ({rule}): {} of {:?} -> {} of {inputs:?}", step.name, step.kernel.op.name(), step.inputs, op.name());
                step.kernel.inputs = inputs.iter().map(|v| ir.types[v.0].clone()).collect();
                step.kernel.op = op;
                step.inputs = inputs;
            }
        }
    }
    let mut removed = removed.into_iter();
    ir.steps.retain(|_| !removed.next().unwrap_or(false));
    replace.apply_to_outputs(&mut ir.outputs);
}

/// The rewrite of step `i`, whose operands are already resolved.
fn rewrite(ir: &Ir, producer: &[usize], i: usize) -> Option<Rewrite> {
    let step = &ir.steps[i];
    let [out] = step.outputs[..] else {
        return None;
    };
    let ty = &ir.types[out.0];
    let op_of = |v: ValueId| -> Option<(&Op, &[ValueId])> {
        let s = ir.steps.get(*producer.get(v.0)?)?;
        Some((&s.kernel.op, &s.inputs))
    };
    // IEEE: x + (+0) turns -0 into +0, so only -0 is an additive identity
    // for f32 (and only +0 a subtractive one); `k` names the integer form.
    let all_signed = |v: ValueId, k: i32, negative_zero: bool| match op_of(v) {
        Some((Op::Constant(c), _)) => match &**c {
            Value::F32(a) => a
                .iter()
                .all(|&x| x == k as f32 && (k != 0 || x.is_sign_negative() == negative_zero)),
            Value::I32(a) => a.iter().all(|&x| x == k),
        },
        _ => false,
    };
    let all = |v: ValueId, k: i32| all_signed(v, k, false);
    let same_type = |v: ValueId| ir.types[v.0] == *ty;
    match (&step.kernel.op, &step.inputs[..]) {
        (Op::Binary(b), &[x, y]) => {
            let (identity, commutes) = match b {
                BinaryOp::Mul => (1, true),
                BinaryOp::Add => (0, true),
                BinaryOp::Sub => (0, false),
                BinaryOp::Div => (1, false),
                BinaryOp::Max | BinaryOp::Min | BinaryOp::Pow => return None,
            };
            let is_identity = |v: ValueId| all_signed(v, identity, *b == BinaryOp::Add);
            if is_identity(y) && same_type(x) {
                return Some(Rewrite::Replace(x, "identity operand"));
            }
            if commutes && is_identity(x) && same_type(y) {
                return Some(Rewrite::Replace(y, "identity operand"));
            }
            let zero = *b == BinaryOp::Mul && (all(x, 0) || all(y, 0));
            if zero && ty.dtype == DType::I32 && ty.shape.numel() <= MAX_FOLDED_ELEMENTS {
                let zeros = Value::I32(ArrayD::zeros(IxDyn(ty.shape.dims())));
                return Some(Rewrite::Become(
                    Op::Constant(Arc::new(zeros)),
                    Vec::new(),
                    "i32 x*0",
                ));
            }
            None
        }
        (Op::Unary(UnaryOp::Neg), &[x]) => match op_of(x)? {
            (Op::Unary(UnaryOp::Neg), &[inner]) => Some(Rewrite::Replace(inner, "--x")),
            _ => None,
        },
        (Op::Layout(LayoutOp::Reshape(shape)), &[x]) => {
            if same_type(x) {
                return Some(Rewrite::Replace(x, "reshape to own shape"));
            }
            match op_of(x)? {
                (Op::Layout(LayoutOp::Reshape(_)), &[inner]) if same_type(inner) => {
                    Some(Rewrite::Replace(inner, "reshape of reshape"))
                }
                (Op::Layout(LayoutOp::Reshape(_)), &[inner]) => Some(Rewrite::Become(
                    Op::Layout(LayoutOp::Reshape(shape.clone())),
                    vec![inner],
                    "reshape of reshape",
                )),
                _ => None,
            }
        }
        (Op::Layout(LayoutOp::Permute(outer)), &[x]) => {
            if is_identity(outer) {
                return Some(Rewrite::Replace(x, "identity permute"));
            }
            match op_of(x)? {
                (Op::Layout(LayoutOp::Permute(first)), &[inner]) => {
                    // Output axis j is x's axis outer[j], which is inner's
                    // axis first[outer[j]].
                    let composed: Vec<usize> = outer
                        .iter()
                        .map(|&j| first.get(j).copied())
                        .collect::<Option<_>>()?;
                    if is_identity(&composed) {
                        Some(Rewrite::Replace(inner, "permute of permute"))
                    } else {
                        Some(Rewrite::Become(
                            Op::Layout(LayoutOp::Permute(composed)),
                            vec![inner],
                            "permute of permute",
                        ))
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether `perm` leaves every axis in place.
fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i == p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::dce::eliminate_dead_code;
    use crate::passes::testing::{check, count, lower};
    use crate::{Graph, Tensor};

    /// Simplifies then drops what became dead, as the pipeline does.
    fn run(g: &Graph, outputs: &[&Tensor]) -> Ir {
        let mut ir = lower(g, outputs);
        simplify(&mut ir);
        check(&ir);
        eliminate_dead_code(&mut ir);
        check(&ir);
        ir
    }

    fn value_of(ir: &Ir, t: &Tensor) -> ValueId {
        let node = t.node();
        let step = ir.steps.iter().find(|s| s.node == node).expect("step kept");
        step.outputs[t.port().output]
    }

    #[test]
    fn identity_operands_vanish() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [2, 3]).expect("input");
        let ones = g.constant(ndarray::Array2::<f32>::ones((1, 3)));
        let zeros = g.constant(ndarray::Array1::<f32>::zeros(3));
        let y = ((1.0 * &(&(&x * 1.0) + -0.0)) - &zeros) / &ones;
        let y = (-0.0 + &y) * &ones;
        let ir = run(&g, &[&y]);
        assert_eq!(ir.steps.len(), 1, "{:?}", ir.steps);
        assert_eq!(ir.outputs[0], value_of(&ir, &x));
    }

    #[test]
    fn adding_positive_zero_to_f32_stays() {
        // -0.0 + 0.0 is +0.0: dropping the add would change the sign.
        let g = Graph::new();
        let x = g.input("x", DType::F32, [3]).expect("input");
        let y = &x + 0.0;
        let ir = run(&g, &[&y]);
        assert!(ir.steps.iter().any(|s| s.kernel.op.name() == "add"));
    }

    #[test]
    fn broadcasting_or_absorbing_identities_stay() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [3]).expect("input");
        let ones = g.constant(ndarray::Array2::<f32>::ones((2, 3)));
        // Grows x to [2, 3]: not x any more.
        let y = &x * &ones;
        // 1 - x, 1 / x, x * 0 on f32 (inf * 0 is NaN) and x ^ 1 stay.
        let z = (1.0 - &x) + (1.0 / &x) + (&x * 0.0) + x.powf(1.0).expect("pow");
        let ir = run(&g, &[&y, &z]);
        assert_eq!(count(&ir, "mul"), 2);
        assert_eq!(count(&ir, "sub"), 1);
        assert_eq!(count(&ir, "div"), 1);
        assert_eq!(count(&ir, "pow"), 1);
    }

    #[test]
    fn integer_times_zero_is_zeros() {
        let g = Graph::new();
        let x = g.input("x", DType::I32, [2, 3]).expect("input");
        let zero = g.constant(ndarray::Array1::<i32>::zeros(3));
        let y = &x * &zero;
        let ir = run(&g, &[&y]);
        assert_eq!(ir.steps.len(), 1);
        let Op::Constant(c) = &ir.steps[0].kernel.op else {
            panic!("expected a constant, got {:?}", ir.steps[0].kernel.op);
        };
        assert_eq!(**c, Value::I32(ArrayD::zeros(IxDyn(&[2, 3]))));
    }

    #[test]
    fn double_negation_cancels() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [3]).expect("input");
        let two = -&(-&x);
        let three = -&two;
        let four = -&three;
        let ir = run(&g, &[&two, &three, &four]);
        assert_eq!(count(&ir, "neg"), 1);
        let xv = value_of(&ir, &x);
        assert_eq!(ir.outputs[0], xv);
        assert_eq!(ir.outputs[2], xv);
        assert_ne!(ir.outputs[1], xv);
    }

    #[test]
    fn reshape_chains_collapse() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [2, 3, 4]).expect("input");
        let y = x
            .reshape(&[6, 4])
            .and_then(|t| t.reshape(&[24]))
            .and_then(|t| t.reshape(&[4, 6]))
            .expect("reshapes");
        let back = y
            .reshape(&[2, 12])
            .and_then(|t| t.reshape(&[2, 3, 4]))
            .expect("back");
        let own = x.reshape(&[2, 3, 4]).expect("own");
        let ir = run(&g, &[&y, &back, &own]);
        assert_eq!(count(&ir, "reshape"), 1);
        let xv = value_of(&ir, &x);
        let r = ir
            .steps
            .iter()
            .find(|s| s.kernel.op.name() == "reshape")
            .expect("one");
        assert_eq!(r.inputs, [xv]);
        assert_eq!(r.kernel.op, Op::Layout(LayoutOp::Reshape([4, 6].into())));
        assert_eq!(ir.outputs, [r.outputs[0], xv, xv]);
    }

    #[test]
    fn permute_chains_compose() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [2, 3, 4]).expect("input");
        let p = x
            .permute(&[1, 2, 0])
            .and_then(|t| t.permute(&[2, 0, 1]))
            .expect("identity");
        let q = x
            .permute(&[2, 0, 1])
            .and_then(|t| t.transpose(0, 1))
            .expect("composed");
        let ident = x.permute(&[0, 1, 2]).expect("identity");
        let ir = run(&g, &[&p, &q, &ident]);
        let xv = value_of(&ir, &x);
        assert_eq!(count(&ir, "permute"), 1);
        let s = ir
            .steps
            .iter()
            .find(|s| s.kernel.op.name() == "permute")
            .expect("one");
        // [2, 0, 1] then swapping the first two axes: x's axes [0, 2, 1].
        assert_eq!(s.kernel.op, Op::Layout(LayoutOp::Permute(vec![0, 2, 1])));
        assert_eq!(ir.types[s.outputs[0].0].shape.dims(), [2, 4, 3]);
        assert_eq!(ir.outputs, [xv, s.outputs[0], xv]);
    }
}
