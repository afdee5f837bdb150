//! Elementwise fusion: each maximal tree of unary, binary and cast steps
//! becomes one [`Op::Fused`] step, which reads its operands and writes its
//! result once instead of materialising every intermediate.

use std::sync::Arc;

use crate::backend::Kernel;
use crate::fused::{FusedExpr, Instr, Scalar};
use crate::passes::{Ir, OperandCaps};
use crate::plan::{Step, ValueId};
use crate::{BinaryOp, Op, Value};

/// Fuses with the operand cap within WebGPU's default 8 storage buffers
/// ([`OperandCaps::default`]); plans use their backends' own limits.
pub fn fuse_elementwise(ir: &mut Ir) {
    fuse_elementwise_with_cap(ir, OperandCaps::default().fused);
}

/// Replaces each maximal tree of elementwise steps (two or more) with one
/// fused step.
///
/// A step joins its consumer's tree when its only result is read by that
/// one step and by nothing else (not a requested output either), both are
/// unary/binary/cast ops with the same pin, its result broadcasts to the
/// tree root's shape (where the fused program computes every value), and
/// the tree's distinct operands stay within `cap`. Where it would not pay
/// a costly step (a transcendental, a square root, a division or a power)
/// stays out: one whose result is smaller than the root's but more than
/// one element, which the fused program would compute again for every
/// element it is broadcast to (`exp` of an `[n]` bias in an `[m, n]` tree
/// runs `n` times on its own, `m * n` times fused). A single element is
/// computed once per kernel on the CPU, which folds it into the program,
/// and costs the GPU nothing its memory traffic does not hide. Single-element
/// constants become literals of the program. The fused step keeps the
/// root's result, location and pin, and takes the root's place in the
/// order, after all of its operands.
pub fn fuse_elementwise_with_cap(ir: &mut Ir, cap: usize) {
    let steps = &ir.steps;
    let n = steps.len();
    let values = ir.types.len();
    // Who makes each value, and how many distinct steps read it.
    let mut producer = vec![usize::MAX; values];
    let mut readers = vec![0u32; values];
    let mut last_reader = vec![usize::MAX; values];
    for (i, s) in steps.iter().enumerate() {
        for &v in &s.outputs {
            producer[v.0] = i;
        }
        for &v in &s.inputs {
            if last_reader[v.0] != i {
                last_reader[v.0] = i;
                readers[v.0] += 1;
            }
        }
    }
    let mut requested = vec![false; values];
    for v in &ir.outputs {
        requested[v.0] = true;
    }
    let literal = |v: ValueId| steps.get(producer[v.0]).and_then(literal_of);

    // Grow trees from the last step backwards: a step's only consumer comes
    // after it, so it is claimed (or not) before it could be a root itself.
    let mut group = vec![usize::MAX; n];
    let mut fused: Vec<Option<Step>> = (0..n).map(|_| None).collect();
    let mut inlined = false;
    let mut stack: Vec<ValueId> = Vec::new();
    let mut instr_of = vec![usize::MAX; values];
    for root in (0..n).rev() {
        let r = &steps[root];
        if group[root] != usize::MAX || !fusible(r) {
            continue;
        }
        let shape = &r.kernel.outputs[0].shape;
        let mut operands: Vec<ValueId> = Vec::new();
        for &v in &r.inputs {
            if literal(v).is_none() && !operands.contains(&v) {
                operands.push(v);
            }
        }
        if operands.len() > cap {
            continue;
        }
        let mut members = vec![root];
        group[root] = root;
        stack.clear();
        stack.extend(operands.iter().copied());
        while let Some(v) = stack.pop() {
            let p = producer[v.0];
            let Some(s) = steps.get(p) else { continue };
            let joins = group[p] == usize::MAX
                && fusible(s)
                && readers[v.0] == 1
                && !requested[v.0]
                && s.pin == r.pin
                && s.kernel.outputs[0].shape.broadcasts_to(shape)
                && pays(s, shape.numel());
            if !joins {
                continue;
            }
            // Absorbing `s` trades operand `v` for the operands of `s`.
            let mut added: Vec<ValueId> = Vec::new();
            for &u in &s.inputs {
                if literal(u).is_none() && !operands.contains(&u) && !added.contains(&u) {
                    added.push(u);
                }
            }
            if operands.len() - 1 + added.len() > cap {
                continue;
            }
            operands.retain(|&o| o != v);
            stack.extend(added.iter().copied());
            operands.extend(added);
            members.push(p);
            group[p] = root;
        }
        if members.len() < 2 {
            continue;
        }
        members.sort_unstable();
        let tables = Tables {
            ir,
            producer: &producer,
            group: &group,
            literal: &literal,
        };
        let (step, literals) = build(&tables, &members, &mut instr_of);
        inlined |= literals;
        tracing::debug!(target: "tensorgraph", "fuse: {} steps into {}", members.len(), step.name);
        fused[root] = Some(step);
    }

    let old = std::mem::take(&mut ir.steps);
    ir.steps = old
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| match (group[i], fused[i].take()) {
            (_, Some(f)) => Some(f),
            (g, None) if g != usize::MAX && g != i => None,
            (_, None) => Some(s),
        })
        .collect();
    if inlined {
        drop_unread_literals(ir);
    }
}

/// Unary, binary and cast steps (one result each) are what fusion merges.
fn fusible(s: &Step) -> bool {
    matches!(s.kernel.op, Op::Unary(_) | Op::Binary(_) | Op::Cast(_))
        && s.outputs.len() == 1
        && s.kernel.outputs.len() == 1
}

/// Whether fusing `s` into a tree whose root has `numel` elements computes
/// nothing costly more often than `s` alone would (see
/// [`fuse_elementwise_with_cap`]).
fn pays(s: &Step, numel: usize) -> bool {
    let own = s.kernel.outputs[0].shape.numel();
    let costly = match s.kernel.op {
        // The transcendentals (and sqrt) are the float-only unary ops.
        Op::Unary(u) => u.float_only(),
        Op::Binary(b) => matches!(b, BinaryOp::Div | BinaryOp::Pow),
        _ => false,
    };
    own == numel || own <= 1 || !costly
}

/// The literal a single-element constant step stands for.
fn literal_of(s: &Step) -> Option<Scalar> {
    let Op::Constant(c) = &s.kernel.op else {
        return None;
    };
    match &**c {
        Value::F32(a) if a.len() == 1 => a.iter().next().map(|&x| Scalar::F32(x)),
        Value::I32(a) if a.len() == 1 => a.iter().next().map(|&x| Scalar::I32(x)),
        Value::F32(_) | Value::I32(_) => None,
    }
}

/// What [`build`] needs to know about the whole IR.
struct Tables<'a> {
    ir: &'a Ir,
    producer: &'a [usize],
    group: &'a [usize],
    literal: &'a dyn Fn(ValueId) -> Option<Scalar>,
}

/// The fused step of a tree: `members` in topological order, the last
/// one the root. `instr_of` is scratch indexed by value id. Also says
/// whether a constant became a literal.
fn build(t: &Tables<'_>, members: &[usize], instr_of: &mut [usize]) -> (Step, bool) {
    let steps = &t.ir.steps;
    let root_index = members[members.len() - 1];
    let root = &steps[root_index];
    let mut expr = FusedExpr {
        instrs: Vec::with_capacity(2 * members.len()),
        dtypes: Vec::with_capacity(2 * members.len()),
    };
    let mut operands: Vec<ValueId> = Vec::new();
    let mut operand_at: Vec<usize> = Vec::new();
    let mut literals = false;
    let push = |expr: &mut FusedExpr, i: Instr, d| {
        expr.instrs.push(i);
        expr.dtypes.push(d);
        expr.instrs.len() - 1
    };
    for &m in members {
        let s = &steps[m];
        let mut args = [0usize; 2];
        for (slot, &v) in args.iter_mut().zip(&s.inputs) {
            let p = t.producer[v.0];
            *slot = if t.group.get(p) == Some(&root_index) {
                instr_of[v.0]
            } else if let Some(x) = (t.literal)(v) {
                literals = true;
                push(&mut expr, Instr::Scalar(x), x.dtype())
            } else if let Some(k) = operands.iter().position(|&o| o == v) {
                operand_at[k]
            } else {
                operands.push(v);
                let dtype = t.ir.types[v.0].dtype;
                let i = push(&mut expr, Instr::Input(operands.len() - 1), dtype);
                operand_at.push(i);
                i
            };
        }
        let instr = match s.kernel.op {
            Op::Unary(u) => Instr::Unary(u, args[0]),
            Op::Binary(b) => Instr::Binary(b, args[0], args[1]),
            Op::Cast(d) => Instr::Cast(d, args[0]),
            // `fusible` admitted only the three above.
            _ => continue,
        };
        instr_of[s.outputs[0].0] = push(&mut expr, instr, s.kernel.outputs[0].dtype);
    }
    let step = Step {
        name: format!("fused_{}", root.name),
        node: root.node,
        location: root.location,
        kernel: Kernel {
            op: Op::Fused(Arc::new(expr)),
            inputs: operands.iter().map(|v| t.ir.types[v.0].clone()).collect(),
            outputs: root.kernel.outputs.clone(),
        },
        inputs: operands,
        outputs: root.outputs.clone(),
        free_after: Vec::new(),
        device: root.device,
        pin: root.pin,
        in_place: None,
    };
    (step, literals)
}

/// Drops single-element constant steps nothing reads any more (their
/// readers now hold them as literals).
fn drop_unread_literals(ir: &mut Ir) {
    let mut read = vec![false; ir.types.len()];
    for s in &ir.steps {
        for v in &s.inputs {
            read[v.0] = true;
        }
    }
    for v in &ir.outputs {
        read[v.0] = true;
    }
    ir.steps
        .retain(|s| literal_of(s).is_none() || s.outputs.iter().any(|v| read[v.0]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::{check, count, lower};
    use crate::{DType, Device, Graph, Tensor};

    fn fused_exprs(ir: &Ir) -> Vec<&FusedExpr> {
        ir.steps
            .iter()
            .filter_map(|s| match &s.kernel.op {
                Op::Fused(e) => Some(&**e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_chain_becomes_one_step_with_literals() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4, 5]).expect("input");
        let e = (&x * 2.0 + 1.0).exp().expect("exp");
        let y = (&e - &x).relu().expect("relu");
        let mut ir = lower(&g, &[&y]);
        let out = ir.outputs[0];
        fuse_elementwise(&mut ir);
        check(&ir);
        assert_eq!(ir.steps.len(), 2, "{:?}", ir.steps);
        assert_eq!(count(&ir, "constant"), 0, "literals are inlined");
        let fused = &ir.steps[1];
        assert_eq!(fused.outputs, vec![out]);
        assert!(fused.name.starts_with("fused_"), "{}", fused.name);
        assert_eq!(fused.inputs.len(), 1, "x is read once");
        let e = &fused_exprs(&ir)[0];
        assert_eq!(e.to_string().matches("in0").count(), 1, "{e}");
        assert_eq!(e.instrs.len(), 8, "{e}");
    }

    #[test]
    fn shared_values_outputs_and_pins_stop_a_tree() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [8]).expect("input");
        let shared = x.exp().expect("exp");
        let a = (&shared + 1.0).sin().expect("a");
        let b = (&shared * 3.0).cos().expect("b");
        let mid = x.tanh().expect("tanh");
        let c = (&mid + &mid).neg().expect("c");
        let pinned = x.abs().expect("abs").on(Device::Gpu);
        let d = pinned.sqrt().expect("sqrt");
        let mut ir = lower(&g, &[&a, &b, &c, &mid, &d]);
        fuse_elementwise(&mut ir);
        check(&ir);
        // exp feeds two trees, tanh is requested, abs has another pin: all
        // stay; each consumer chain fuses on its own (sqrt alone does not).
        assert_eq!(count(&ir, "exp"), 1);
        assert_eq!(count(&ir, "tanh"), 1);
        assert_eq!(count(&ir, "abs"), 1);
        assert_eq!(count(&ir, "sqrt"), 1);
        assert_eq!(count(&ir, "fused"), 3);
    }

    #[test]
    fn costly_broadcast_steps_stay_out_of_larger_trees() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [64, 32]).expect("x");
        let b = g.input("b", DType::F32, [32]).expect("b");
        let s = g.input("s", DType::F32, [1]).expect("s");
        let c = g.input("c", DType::F32, [64, 1]).expect("c");
        // exp(b) would run 64 times per element of b; `* 2` is cheap.
        let bias = &b.exp().expect("exp") * 2.0;
        // A single element (folded on the CPU) and the root's own shape
        // join whatever the cost; so does a cheap broadcast (c + 1).
        let one = s.sin().expect("sin");
        let y = (&x + &bias).mul(&one).expect("y");
        let y = y
            .tanh()
            .and_then(|t| t.div(&(&c + 1.0)))
            .expect("tanh, div");
        let mut ir = lower(&g, &[&y]);
        fuse_elementwise(&mut ir);
        check(&ir);
        assert_eq!(count(&ir, "exp"), 1, "exp of [32] is its own step");
        assert_eq!(count(&ir, "fused"), 1);
        let e = fused_exprs(&ir)[0].to_string();
        for op in ["mul", "add", "sin", "tanh", "div"] {
            assert!(e.contains(op), "{op} fused: {e}");
        }
        assert!(!e.contains("exp"), "{e}");
    }

    #[test]
    fn the_operand_cap_splits_a_wide_tree() {
        let g = Graph::new();
        let xs: Vec<Tensor> = (0..10)
            .map(|i| g.input(&format!("x{i}"), DType::F32, [16]).expect("input"))
            .collect();
        let mut t = xs[0].exp().expect("exp");
        for x in &xs[1..] {
            t = &t + &x.sin().expect("sin");
        }
        let mut ir = lower(&g, &[&t]);
        fuse_elementwise_with_cap(&mut ir, 4);
        check(&ir);
        let fused: Vec<&Step> = ir
            .steps
            .iter()
            .filter(|s| s.kernel.op.name() == "fused")
            .collect();
        assert!(fused.len() >= 2, "{} fused", fused.len());
        assert!(fused.iter().all(|s| s.inputs.len() <= 4));
        assert_eq!(
            count(&ir, "add") + count(&ir, "sin"),
            0,
            "every op is in a kernel"
        );
        // A cap below a binary root's own two operands: only unary chains
        // (one operand) fuse.
        let mut ir = lower(&g, &[&t]);
        fuse_elementwise_with_cap(&mut ir, 1);
        check(&ir);
        assert!(
            ir.steps
                .iter()
                .all(|s| s.inputs.len() <= 1 || s.kernel.op.name() != "fused")
        );
        assert_eq!(count(&ir, "add"), 9, "no add fuses");
    }

    #[test]
    fn broadcast_trees_and_mixed_dtypes() {
        let g = Graph::new();
        let col = g.input("col", DType::F32, [5, 1]).expect("input");
        let row = g.input("row", DType::I32, [1, 7]).expect("input");
        let r = row.cast(DType::F32).expect("cast");
        let y = ((&col * 2.0) + &r)
            .tanh()
            .and_then(|t| t.cast(DType::I32))
            .expect("y");
        let mut ir = lower(&g, &[&y]);
        fuse_elementwise(&mut ir);
        check(&ir);
        assert_eq!(count(&ir, "fused"), 1);
        assert_eq!(ir.steps.len(), 3);
        let e = fused_exprs(&ir)[0];
        assert_eq!(e.dtypes.last(), Some(&DType::I32));
        assert!(e.dtypes.contains(&DType::F32));
    }

    #[test]
    fn a_long_chain_fuses_without_recursion() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4]).expect("input");
        let mut t = x.clone();
        for i in 0..10_000 {
            t = if i % 2 == 0 {
                t.sin().expect("sin")
            } else {
                &t * 0.5
            };
        }
        let mut ir = lower(&g, &[&t]);
        let start = std::time::Instant::now();
        fuse_elementwise(&mut ir);
        let took = start.elapsed();
        check(&ir);
        assert_eq!(ir.steps.len(), 2);
        assert_eq!(fused_exprs(&ir)[0].instrs.len(), 1 + 10_000 + 5_000);
        assert!(took.as_millis() < 500, "took {took:?}");
    }
}
