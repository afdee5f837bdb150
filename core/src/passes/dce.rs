//! Dead-code elimination: steps whose results no requested output needs
//! are dropped.

use crate::passes::Ir;

/// Keeps a step only if a requested output or a kept later step reads one
/// of its results. One sweep in reverse topological order, so a dead chain
/// dies whole; the kept steps stay in their order. Inputs nothing reads
/// are dropped too, and then need no feed.
pub fn eliminate_dead_code(ir: &mut Ir) {
    let mut live = vec![false; ir.types.len()];
    for v in &ir.outputs {
        live[v.0] = true;
    }
    let mut keep = vec![false; ir.steps.len()];
    for (i, step) in ir.steps.iter().enumerate().rev() {
        if step.outputs.iter().any(|v| live[v.0]) {
            keep[i] = true;
            for v in &step.inputs {
                live[v.0] = true;
            }
        } else {
            tracing::debug!(target: "tensorgraph", "dce: {} ({}) is dead", step.name, step.kernel.op.name());
        }
    }
    let mut keep = keep.into_iter();
    ir.steps.retain(|_| keep.next().unwrap_or(true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::{check, count, lower};
    use crate::{DType, Graph};

    #[test]
    fn dead_branches_and_unread_inputs_are_dropped() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [3]).expect("input");
        let unused = g.input("unused", DType::F32, [3]).expect("input");
        let y = x.exp().expect("exp");
        // A dead chain hanging off a live value, and one off an unread input.
        let _dead = y
            .sin()
            .and_then(|t| t.cos())
            .and_then(|t| t.tanh())
            .expect("dead");
        let _dead2 = unused.relu().expect("dead");
        let mut ir = lower(&g, &[&y]);
        assert_eq!(ir.steps.len(), 7);
        eliminate_dead_code(&mut ir);
        check(&ir);
        let names: Vec<&str> = ir.steps.iter().map(|s| s.kernel.op.name()).collect();
        assert_eq!(names, ["input", "exp"]);
    }

    #[test]
    fn a_multi_output_step_lives_if_one_result_is_read() {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4]).expect("input");
        let parts = x.split(0, crate::SplitSpec::Parts(2)).expect("split");
        let y = parts[1].exp().expect("exp");
        let _dead = parts[0].exp().expect("exp");
        let mut ir = lower(&g, &[&y]);
        eliminate_dead_code(&mut ir);
        check(&ir);
        assert_eq!(count(&ir, "split"), 1);
        assert_eq!(count(&ir, "exp"), 1);
    }
}
