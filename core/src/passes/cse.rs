//! Common-subexpression elimination: the same op on the same operands is
//! computed once, however many places of user code built it.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use crate::passes::{Ir, Replacements};
use crate::plan::Step;
use crate::{Op, Value};

/// Constants longer than this are hashed by their first elements only
/// (equality still compares every element).
const HASHED_ELEMENTS: usize = 64;

/// Drops every step that repeats an earlier step (equal op, same operands,
/// same pin) and points its readers, and the requested outputs, at the
/// earlier step's results. Constants are equal when their elements are
/// bitwise equal; custom ops are never merged, since they may have
/// effects.
pub fn eliminate_common_subexpressions(ir: &mut Ir) {
    let mut replace = Replacements::new(ir.types.len());
    // Buckets of kept steps (indices into `kept`) by a hash of their key.
    let mut seen: HashMap<u64, Vec<usize>> = HashMap::with_capacity(ir.steps.len());
    let mut kept: Vec<Step> = Vec::with_capacity(ir.steps.len());
    for mut step in std::mem::take(&mut ir.steps) {
        replace.apply_to_step(&mut step);
        let Some(hash) = key_hash(&step) else {
            kept.push(step);
            continue;
        };
        let bucket = seen.entry(hash).or_default();
        match bucket.iter().find(|&&k| same_computation(&kept[k], &step)) {
            Some(&k) => {
                let original = &kept[k];
                for (&dup, &orig) in step.outputs.iter().zip(&original.outputs) {
                    tracing::debug!(target: "tensorgraph", "cse: {dup} -> {orig} ({} is {})", step.name, original.name);
                    replace.set(dup, orig);
                }
            }
            None => {
                bucket.push(kept.len());
                kept.push(step);
            }
        }
    }
    ir.steps = kept;
    replace.apply_to_outputs(&mut ir.outputs);
}

/// A hash of what the step computes, or `None` for steps never merged.
fn key_hash(step: &Step) -> Option<u64> {
    let mut h = DefaultHasher::new();
    let op = &step.kernel.op;
    op.name().hash(&mut h);
    step.inputs.hash(&mut h);
    match op {
        Op::Custom(_) | Op::Transfer { .. } => return None,
        Op::Input { name } => name.hash(&mut h),
        Op::Constant(c) => hash_value(c, &mut h),
        Op::Unary(u) => u.hash(&mut h),
        Op::Binary(b) => b.hash(&mut h),
        Op::MatMul => {}
        Op::Reduce {
            op,
            axes,
            keep_dims,
        } => (op, axes, keep_dims).hash(&mut h),
        Op::Layout(l) => l.hash(&mut h),
        Op::Concat { axis } => axis.hash(&mut h),
        Op::Split { axis, sizes } => (axis, sizes).hash(&mut h),
        Op::Cast(d) => d.hash(&mut h),
        Op::Fused(e) | Op::MatMulEpilogue(e) => e.to_string().hash(&mut h),
        Op::ReducePrologue {
            expr,
            shape,
            op,
            axes,
            keep_dims,
        } => (expr.to_string(), shape, op, axes, keep_dims).hash(&mut h),
    }
    Some(h.finish())
}

/// Hashes a constant's type and first elements.
fn hash_value(v: &Value, h: &mut impl Hasher) {
    v.ty().hash(h);
    match v {
        Value::F32(a) => a
            .iter()
            .take(HASHED_ELEMENTS)
            .for_each(|x| x.to_bits().hash(h)),
        Value::I32(a) => a.iter().take(HASHED_ELEMENTS).for_each(|x| x.hash(h)),
    }
}

/// Whether two steps compute the same values.
fn same_computation(a: &Step, b: &Step) -> bool {
    let ops_equal = match (&a.kernel.op, &b.kernel.op) {
        (Op::Constant(x), Op::Constant(y)) => same_constant(x, y),
        (Op::Custom(_), _) | (_, Op::Custom(_)) => false,
        (x, y) => x == y,
    };
    ops_equal
        && a.inputs == b.inputs
        && a.kernel.inputs == b.kernel.inputs
        && a.kernel.outputs == b.kernel.outputs
        && a.pin == b.pin
}

/// Bitwise equality of constants: `0.0` and `-0.0` differ (`1 / x` tells
/// them apart), and a NaN equals the same NaN.
pub(crate) fn same_constant(a: &Value, b: &Value) -> bool {
    if std::ptr::eq(a, b) {
        return true;
    }
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => {
            x.shape() == y.shape()
                && x.iter()
                    .zip(y.iter())
                    .all(|(p, q)| p.to_bits() == q.to_bits())
        }
        (Value::I32(x), Value::I32(y)) => x == y,
        (Value::F32(_), Value::I32(_)) | (Value::I32(_), Value::F32(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::{check, count, lower};
    use crate::{DType, Device, Graph, Tensor};

    fn layer(x: &Tensor, w: &Tensor) -> Tensor {
        x.matmul(w).and_then(|h| h.relu()).expect("layer")
    }

    #[test]
    fn same_op_on_same_operands_is_computed_once() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [2, 3]).expect("input");
        let w = g.input("w", DType::F32, [3, 4]).expect("input");
        let a = layer(&x, &w);
        let b = layer(&x, &w);
        let y = a.add(&b).expect("add");
        let mut ir = lower(&g, &[&y, &a, &b]);
        eliminate_common_subexpressions(&mut ir);
        check(&ir);
        assert_eq!(count(&ir, "matmul"), 1);
        assert_eq!(count(&ir, "relu"), 1);
        assert_eq!(
            ir.outputs[1], ir.outputs[2],
            "both outputs read the one relu"
        );
        let add = ir
            .steps
            .iter()
            .find(|s| s.kernel.op.name() == "add")
            .expect("add kept");
        assert_eq!(add.inputs[0], add.inputs[1]);
        assert_eq!(add.inputs[0], ir.outputs[1]);
    }

    #[test]
    fn constants_merge_by_bits() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [3]).expect("input");
        let y = (&x * 2.0) + (&x * 2.0);
        let z = (&x / 0.0f32) + (&x / -0.0f32);
        let mut ir = lower(&g, &[&y, &z]);
        assert_eq!(count(&ir, "constant"), 4);
        eliminate_common_subexpressions(&mut ir);
        check(&ir);
        // The two 2.0s merge, then the two products; 0.0 and -0.0 do not.
        assert_eq!(count(&ir, "constant"), 3);
        assert_eq!(count(&ir, "mul"), 1);
        assert_eq!(count(&ir, "div"), 2);
    }

    #[test]
    fn custom_ops_and_different_pins_are_kept_apart() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [3]).expect("input");
        let custom = |g: &Graph| {
            g.custom("id", &[&x], vec![x.ty().clone()], |ins| {
                Ok(vec![ins[0].clone()])
            })
            .expect("custom")
            .remove(0)
        };
        let (c1, c2) = (custom(&g), custom(&g));
        let e1 = x.exp().expect("exp");
        let e2 = x.exp().expect("exp").on(Device::Gpu);
        let mut ir = lower(&g, &[&c1, &c2, &e1, &e2]);
        eliminate_common_subexpressions(&mut ir);
        check(&ir);
        assert_eq!(count(&ir, "custom"), 2);
        assert_eq!(count(&ir, "exp"), 2);
    }

    #[test]
    fn merges_cascade_down_a_chain() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4]).expect("input");
        let chain = || {
            let mut t = x.clone();
            for _ in 0..50 {
                t = t.sin().and_then(|t| t.sum(&[], true)).expect("chain");
            }
            t
        };
        let (a, b) = (chain(), chain());
        let mut ir = lower(&g, &[&a, &b]);
        eliminate_common_subexpressions(&mut ir);
        check(&ir);
        assert_eq!(ir.steps.len(), 101);
        assert_eq!(ir.outputs[0], ir.outputs[1]);
    }
}
