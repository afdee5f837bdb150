//! Liveness: a pure function of the step order giving, per step, the
//! values whose last use it is, and the memory that order needs.

use crate::TensorType;
use crate::plan::{Step, ValueId};

/// For each step, the values to free right after it: every value whose
/// last reader (or, if nothing reads it, whose producer) is that step.
/// Values in `keep` (requested outputs) are never freed.
pub fn free_lists(steps: &[Step], values: usize, keep: &[ValueId]) -> Vec<Vec<ValueId>> {
    let mut last: Vec<Option<usize>> = vec![None; values];
    for (i, step) in steps.iter().enumerate() {
        for &v in step.outputs.iter().chain(&step.inputs) {
            last[v.0] = Some(i);
        }
    }
    for &v in keep {
        last[v.0] = None;
    }
    let mut frees = vec![Vec::new(); steps.len()];
    for (v, at) in last.into_iter().enumerate() {
        if let Some(i) = at {
            frees[i].push(ValueId(v));
        }
    }
    frees
}

/// What a plan needs from one device's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryPlan {
    /// Most bytes alive at once.
    pub peak_bytes: usize,
    /// Buffers created in one run.
    pub allocations: usize,
    /// Bytes of every value the device produces, as if none were freed.
    pub total_bytes: usize,
}

/// Simulates one run in step order: each step creates its outputs, then
/// frees its `free_after` list. Requested outputs stay alive to the end.
pub fn plan_memory(steps: &[Step], types: &[TensorType], devices: usize) -> Vec<MemoryPlan> {
    let mut plans = vec![MemoryPlan::default(); devices];
    let mut live = vec![0usize; devices];
    // A value lives on the device of the step that made it, which is not
    // the freeing step's device when a transfer read it last.
    let mut home = vec![0usize; types.len()];
    for step in steps {
        let d = step.device;
        for &v in &step.outputs {
            let bytes = types[v.0].bytes();
            home[v.0] = d;
            live[d] += bytes;
            plans[d].total_bytes += bytes;
            plans[d].allocations += 1;
        }
        plans[d].peak_bytes = plans[d].peak_bytes.max(live[d]);
        for &v in &step.free_after {
            live[home[v.0]] -= types[v.0].bytes();
        }
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Kernel;
    use crate::{DType, NodeId, Op, UnaryOp};

    fn step(inputs: &[usize], outputs: &[usize]) -> Step {
        let ty = TensorType::new(DType::F32, [4]);
        Step {
            name: format!("s{}", outputs[0]),
            node: NodeId(petgraph::stable_graph::NodeIndex::new(outputs[0])),
            location: std::panic::Location::caller(),
            kernel: Kernel {
                op: Op::Unary(UnaryOp::Neg),
                inputs: vec![ty.clone(); inputs.len()],
                outputs: vec![ty; outputs.len()],
            },
            inputs: inputs.iter().copied().map(ValueId).collect(),
            outputs: outputs.iter().copied().map(ValueId).collect(),
            free_after: Vec::new(),
            device: 0,
            pin: None,
        }
    }

    #[test]
    fn diamond_frees_after_last_reader_and_keeps_outputs() {
        // %0 -> %1, %0 -> %2, (%1, %2) -> %3 (output); %4 produced, unread.
        let mut steps = vec![
            step(&[], &[0]),
            step(&[0], &[1]),
            step(&[0], &[2]),
            step(&[1, 2], &[3]),
            step(&[3], &[4]),
        ];
        let frees = free_lists(&steps, 5, &[ValueId(3)]);
        assert_eq!(frees[0], vec![]);
        assert_eq!(frees[1], vec![]);
        assert_eq!(frees[2], vec![ValueId(0)]);
        assert_eq!(frees[3], vec![ValueId(1), ValueId(2)]);
        assert_eq!(frees[4], vec![ValueId(4)]);
        for (s, f) in steps.iter_mut().zip(frees) {
            s.free_after = f;
        }
        let types = vec![TensorType::new(DType::F32, [4]); 5];
        let plan = plan_memory(&steps, &types, 1);
        // Peak: three 16-byte values alive at steps 2 (%0 %1 %2) and 3
        // (%1 %2 %3); %0 is gone before %3 is born.
        assert_eq!(plan[0].peak_bytes, 48);
        assert_eq!(plan[0].total_bytes, 80);
        assert_eq!(plan[0].allocations, 5);
    }
}
