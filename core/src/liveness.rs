//! Liveness: a pure function of the step order giving, per step, the
//! values whose last use it is, and the memory that order needs.

use crate::TensorType;
use crate::plan::{Step, ValueId};
use crate::schedule::Task;

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
        // An in-place result takes over its donor's buffer: no new bytes,
        // and the donor's bytes are not released.
        let donor = step.in_place.map(|k| step.inputs[k]);
        for &v in &step.outputs {
            let bytes = types[v.0].bytes();
            home[v.0] = d;
            plans[d].total_bytes += bytes;
            if donor.is_none() {
                live[d] += bytes;
                plans[d].allocations += 1;
            }
        }
        plans[d].peak_bytes = plans[d].peak_bytes.max(live[d]);
        for &v in &step.free_after {
            if Some(v) != donor {
                live[home[v.0]] -= types[v.0].bytes();
            }
        }
    }
    plans
}

/// Marks steps that may write their result into an operand's buffer
/// (`can` says whether the step's backend does this for its kernel). The
/// operand must have the result's exact type, be read once by the step,
/// end its life there (by the static free lists), not be requested or be
/// a host value the caller or a constant owns, and have every one of its
/// readers in the step's own task, so no concurrently running task can
/// still need it.
pub fn plan_in_place(
    steps: &mut [Step],
    tasks: &[Task],
    types: &[TensorType],
    keep: &[ValueId],
    can: impl Fn(&Step) -> bool,
) {
    let mut task_of = vec![0usize; steps.len()];
    for (t, task) in tasks.iter().enumerate() {
        for i in task.steps.clone() {
            task_of[i] = t;
        }
    }
    let mut producer = vec![usize::MAX; types.len()];
    let mut reader_tasks: Vec<Vec<usize>> = vec![Vec::new(); types.len()];
    for (i, step) in steps.iter().enumerate() {
        for v in &step.outputs {
            producer[v.0] = i;
        }
        for v in &step.inputs {
            if !reader_tasks[v.0].contains(&task_of[i]) {
                reader_tasks[v.0].push(task_of[i]);
            }
        }
    }
    for i in 0..steps.len() {
        let step = &steps[i];
        let [out] = step.outputs[..] else { continue };
        if !can(step) {
            continue;
        }
        let donor = step.inputs.iter().position(|&v| {
            let p = producer[v.0];
            types[v.0] == types[out.0]
                && step.inputs.iter().filter(|&&u| u == v).count() == 1
                && step.free_after.contains(&v)
                && !keep.contains(&v)
                && p != usize::MAX
                && !steps[p].kernel.op.is_source()
                && reader_tasks[v.0] == [task_of[i]]
        });
        steps[i].in_place = donor;
    }
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
            in_place: None,
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
