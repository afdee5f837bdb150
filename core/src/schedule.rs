//! Scheduling: a topological order that runs the longest remaining path
//! first, and the cut of that order into tasks (segments on one backend,
//! transfers, custom ops) with their dependencies.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

use crate::Op;
use crate::plan::Step;

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Consecutive kernel steps on one backend, run by one `execute`.
    Segment,
    /// Values copied between devices.
    Transfer,
    /// A user closure, run on a thread of its own so that blocking work
    /// does not hold a device lane.
    Custom,
}

/// A unit of scheduling.
#[derive(Debug, Clone)]
pub struct Task {
    /// What it does.
    pub kind: TaskKind,
    /// Its steps, a range of [`crate::Plan::steps`].
    pub steps: Range<usize>,
    /// The backend its steps run on.
    pub device: usize,
    /// Tasks that must finish first.
    pub deps: Vec<usize>,
    /// Tasks that wait on this one.
    pub dependents: Vec<usize>,
    /// Longest estimated path from its start to the end of the plan, s.
    pub priority: f64,
}

/// For each step, the index of the step producing each value.
pub(crate) fn producers(steps: &[Step], values: usize) -> Vec<usize> {
    let mut producer = vec![usize::MAX; values];
    for (i, s) in steps.iter().enumerate() {
        for v in &s.outputs {
            producer[v.0] = i;
        }
    }
    producer
}

/// Reorders topologically sorted `steps` so that, among ready steps, the
/// one with the longest remaining (cost-weighted) path goes first. Returns
/// the steps and each one's remaining-path length.
pub(crate) fn order(
    steps: Vec<Step>,
    values: usize,
    cost: impl Fn(&Step) -> f64,
) -> (Vec<Step>, Vec<f64>) {
    let n = steps.len();
    let producer = producers(&steps, values);
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for (i, s) in steps.iter().enumerate() {
        let mut deps: Vec<usize> = s.inputs.iter().map(|v| producer[v.0]).collect();
        deps.sort_unstable();
        deps.dedup();
        indegree[i] = deps.len();
        for p in deps {
            consumers[p].push(i);
        }
    }
    // Bottom levels in reverse topological order: no recursion.
    let mut level = vec![0.0f64; n];
    for i in (0..n).rev() {
        let below = consumers[i].iter().map(|&c| level[c]).fold(0.0, f64::max);
        level[i] = cost(&steps[i]) + below;
    }
    // Sources another device reads come first (they have no inputs), so
    // they form one leading task and never split a segment in two.
    for (i, s) in steps.iter().enumerate() {
        if crosses(s, &steps, &consumers[i]) {
            level[i] = f64::INFINITY;
        }
    }
    // Kahn's algorithm with a max-heap on the level; ties keep the
    // original order. Non-negative f64 order like their bit patterns.
    let mut heap: BinaryHeap<(u64, Reverse<usize>)> = (0..n)
        .filter(|&i| indegree[i] == 0)
        .map(|i| (level[i].to_bits(), Reverse(i)))
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some((_, Reverse(i))) = heap.pop() {
        order.push(i);
        for &c in &consumers[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                heap.push((level[c].to_bits(), Reverse(c)));
            }
        }
    }
    let mut slots: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    let levels = order.iter().map(|&i| level[i]).collect();
    let steps = order.into_iter().filter_map(|i| slots[i].take()).collect();
    (steps, levels)
}

/// Whether `step` is a source read by a transfer (`readers` are the
/// indices of the steps reading it).
fn crosses(step: &Step, steps: &[Step], readers: &[usize]) -> bool {
    step.kernel.op.is_source()
        && readers
            .iter()
            .any(|&r| matches!(steps[r].kernel.op, Op::Transfer { .. }))
}

fn kind_of(step: &Step) -> TaskKind {
    match step.kernel.op {
        Op::Transfer { .. } => TaskKind::Transfer,
        Op::Custom(_) => TaskKind::Custom,
        _ => TaskKind::Segment,
    }
}

/// Cuts the ordered steps into tasks: a new task at every change of
/// backend, and every transfer and custom op is a task of its own.
pub(crate) fn tasks(steps: &[Step], levels: &[f64], values: usize) -> Vec<Task> {
    let mut tasks: Vec<Task> = Vec::new();
    let mut task_of = vec![0usize; steps.len()];
    // Sources that another device reads (through a transfer) make tasks of
    // their own, so the transfer carrying them waits for nothing else.
    let mut crossing = vec![false; values];
    for s in steps {
        if let Op::Transfer { .. } = s.kernel.op {
            s.inputs.iter().for_each(|v| crossing[v.0] = true);
        }
    }
    let crosses: Vec<bool> = steps
        .iter()
        .map(|s| s.kernel.op.is_source() && s.outputs.iter().any(|v| crossing[v.0]))
        .collect();
    for (i, s) in steps.iter().enumerate() {
        let kind = kind_of(s);
        let extend = tasks.last().is_some_and(|t: &Task| {
            t.kind == TaskKind::Segment
                && kind == TaskKind::Segment
                && t.device == s.device
                && crosses[t.steps.end - 1] == crosses[i]
        });
        if extend {
            if let Some(t) = tasks.last_mut() {
                t.steps.end = i + 1;
            }
        } else {
            tasks.push(Task {
                kind,
                steps: i..i + 1,
                device: s.device,
                deps: Vec::new(),
                dependents: Vec::new(),
                priority: levels[i],
            });
        }
        task_of[i] = tasks.len() - 1;
    }
    let producer = producers(steps, values);
    for (i, s) in steps.iter().enumerate() {
        let t = task_of[i];
        for v in &s.inputs {
            let d = task_of[producer[v.0]];
            if d != t && !tasks[t].deps.contains(&d) {
                tasks[t].deps.push(d);
                tasks[d].dependents.push(t);
            }
        }
    }
    tasks
}
