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
    for step in steps {
        let d = step.device;
        for &v in &step.outputs {
            let bytes = types[v.0].bytes();
            live[d] += bytes;
            plans[d].total_bytes += bytes;
            plans[d].allocations += 1;
        }
        plans[d].peak_bytes = plans[d].peak_bytes.max(live[d]);
        for &v in &step.free_after {
            live[d] -= types[v.0].bytes();
        }
    }
    plans
}
