//! Compiling a graph into a `Plan`: prune to the requested outputs, order
//! topologically, choose the backend, and attach liveness.

use std::fmt;
use std::panic::Location;
use std::sync::Arc;

use petgraph::algo::toposort;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::{Dfs, NodeFiltered, NodeIndexable, Reversed};

use crate::backend::{Backend, Kernel};
use crate::graph::GraphInner;
use crate::liveness::{self, MemoryPlan};
use crate::passes::{self, PassOptions};
use crate::persist;
use crate::schedule::{self, Task};
use crate::{Ctx, Device, Error, Graph, NodeId, Op, Result, Tensor, TensorType, placement};

/// Identifies one value (one node output) within a plan. Shown as `%N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// One node of the graph, lowered: a kernel with its value bindings.
#[derive(Debug, Clone)]
pub struct Step {
    /// The node's name.
    pub name: String,
    /// The graph node it came from.
    pub node: NodeId,
    /// Where user code built the node.
    pub location: &'static Location<'static>,
    /// What to compute.
    pub kernel: Kernel,
    /// Operand values.
    pub inputs: Vec<ValueId>,
    /// Result values.
    pub outputs: Vec<ValueId>,
    /// Values whose last use is this step, freed right after it.
    pub free_after: Vec<ValueId>,
    /// Index of the backend in [`Plan::backends`].
    pub device: usize,
    /// The device the user pinned the node to, if any.
    pub pin: Option<Device>,
    /// Set when the step writes its (single) result into the buffer of
    /// operand `k`, whose life ends at this step: the backend takes that
    /// buffer over instead of allocating (see `backend::take_in_place`).
    pub in_place: Option<usize>,
}

impl Step {
    /// The error context naming this step's node.
    pub fn ctx(&self) -> Ctx {
        Ctx {
            op: self.kernel.op.name(),
            node: self.name.clone(),
            location: self.location,
        }
    }
}

/// An input the plan needs fed.
#[derive(Debug, Clone)]
pub(crate) struct FeedSlot {
    pub(crate) name: String,
    pub(crate) value: ValueId,
    pub(crate) ty: TensorType,
}

/// How to compile: which device, and the backends to choose from.
/// `tensorgraph::options(device)` fills in the backends this build has.
#[derive(Clone, Default)]
pub struct CompileOptions {
    /// The device asked for.
    pub device: Device,
    /// Available backends, at most one per device.
    pub backends: Vec<Arc<dyn Backend>>,
    /// Which graph rewrites run (all by default).
    pub passes: PassOptions,
    /// Whether elementwise steps may write their result over an operand
    /// that dies there (the memory planner's in-place reuse; on by
    /// default). Off, every result gets a buffer of its own.
    pub in_place: bool,
}

impl fmt::Debug for CompileOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.backends.iter().map(|b| b.name()).collect();
        f.debug_struct("CompileOptions")
            .field("device", &self.device)
            .field("backends", &names)
            .field("passes", &self.passes)
            .field("in_place", &self.in_place)
            .finish()
    }
}

impl CompileOptions {
    /// Options for `device` with the given backends.
    pub fn new(device: Device, backends: Vec<Arc<dyn Backend>>) -> Self {
        CompileOptions {
            device,
            backends,
            passes: PassOptions::default(),
            in_place: true,
        }
    }

    /// The backend `device` resolves to: `Auto` takes a GPU when one is
    /// present, else the CPU.
    pub fn resolve(&self) -> Result<Arc<dyn Backend>> {
        let find = |d: Device| self.backends.iter().find(|b| b.device() == d).cloned();
        let unavailable = |hint: &str| Error::DeviceUnavailable {
            device: self.device,
            hint: hint.to_string(),
        };
        match self.device {
            Device::Cpu => find(Device::Cpu).ok_or_else(|| unavailable("no CPU backend was given")),
            Device::Gpu => find(Device::Gpu).ok_or_else(|| {
                unavailable("no GPU backend: build with the `gpu` feature and check that a Vulkan, Metal or DX12 adapter exists")
            }),
            Device::Auto => find(Device::Gpu)
                .or_else(|| find(Device::Cpu))
                .ok_or_else(|| unavailable("no backend was given")),
        }
    }
}

/// A compiled plan: built once, run many times with new feeds. `Send +
/// Sync`; several threads may run one plan at once.
pub struct Plan {
    pub(crate) steps: Vec<Step>,
    pub(crate) types: Vec<TensorType>,
    pub(crate) outputs: Vec<ValueId>,
    pub(crate) feeds: Vec<FeedSlot>,
    pub(crate) graph_inputs: Vec<String>,
    pub(crate) backends: Vec<Arc<dyn Backend>>,
    pub(crate) tasks: Vec<Task>,
    /// The step producing each value.
    pub(crate) producer: Vec<Option<usize>>,
    /// How many steps read each value (each step counted once).
    pub(crate) readers: Vec<u32>,
    /// The backend index holding each value.
    pub(crate) value_device: Vec<usize>,
    pub(crate) memory: Vec<MemoryPlan>,
    /// Set when the plan keeps persisted values across runs.
    pub(crate) persist: Option<Box<persist::Persist>>,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("steps", &self.steps.len())
            .field("tasks", &self.tasks.len())
            .field("memory", &self.memory)
            .finish()
    }
}

impl Plan {
    /// The steps in execution order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The tasks the executor schedules: segments, transfers, custom ops.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// The type of every value, indexed by [`ValueId`].
    pub fn value_types(&self) -> &[TensorType] {
        &self.types
    }

    /// The values returned by `run`, in the order requested.
    pub fn outputs(&self) -> &[ValueId] {
        // A persisting plan also outputs its persisted values, after these.
        let n = self
            .persist
            .as_ref()
            .map_or(self.outputs.len(), |p| p.requested);
        &self.outputs[..n]
    }

    /// The backends the plan may run on; [`Step::device`] indexes this.
    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.backends
    }

    /// The device each step runs on, by step.
    pub fn step_device(&self, step: &Step) -> Device {
        self.backends[step.device].device()
    }

    /// Planned memory per backend (same order as [`Plan::backends`]).
    pub fn planned_memory(&self) -> &[MemoryPlan] {
        &self.memory
    }

    /// Planned peak bytes, summed over devices.
    pub fn planned_peak_bytes(&self) -> usize {
        self.memory.iter().map(|m| m.peak_bytes).sum()
    }
}

/// A rough cost of a step when no calibration is at hand: enough to order
/// ready steps by their remaining work.
fn rough_seconds(step: &Step) -> f64 {
    let k = &step.kernel;
    let bytes: usize = k.inputs.iter().chain(&k.outputs).map(|t| t.bytes()).sum();
    1e-6 + k.op.flops(&k.inputs, &k.outputs) as f64 * 2e-11 + bytes as f64 * 1e-10
}

impl Graph {
    /// Compiles the ancestors of `outputs` (and nothing else) into a plan:
    /// prune, order, place, insert transfers, schedule, liveness.
    pub fn compile(&self, outputs: &[&Tensor], options: &CompileOptions) -> Result<Plan> {
        if outputs.is_empty() {
            return Err(Error::NoOutputs);
        }
        if let Some(t) = outputs.iter().find(|t| !t.graph.same(self)) {
            return Err(Error::ForeignOutput { node: t.name() });
        }
        options.resolve()?;
        let backends = options.backends.clone();
        let g = self.lock();

        // 1. Prune: a reverse DFS from the outputs marks their ancestors.
        let reversed = Reversed(&g.dag);
        let mut dfs = Dfs::empty(reversed);
        for t in outputs {
            dfs.move_to(t.port.node.0);
            while dfs.next(reversed).is_some() {}
        }
        let keep = dfs.discovered;

        // 2. Order: petgraph's toposort is iterative, so a chain of a
        // million nodes does not overflow the stack.
        let order = toposort(&NodeFiltered(&g.dag, &keep), None)
            .map_err(|c| Error::Internal(format!("cycle at node {}", c.node_id().index())))?;

        // 3. Lower each node to a step with value bindings.
        let Lowering {
            ir,
            feeds,
            persisted,
        } = lower(&g, order, outputs)?;
        let (steps, types, outputs) = (ir.steps, ir.types, ir.outputs);
        let mut graph_inputs: Vec<String> = g.inputs.keys().cloned().collect();
        graph_inputs.sort();
        drop(g);

        // 4. Rewrite: folding, CSE, simplification, dead code (passes/).
        // Persisted values ride along as outputs, so no pass drops them or
        // renames them unseen.
        let requested = outputs.len();
        let mut ir = passes::Ir {
            steps,
            types,
            outputs: outputs.into_iter().chain(persisted).collect(),
        };
        let cpu = backends.iter().find(|b| b.device() == Device::Cpu);
        // Fused kernels fit the tightest binding limit of any backend a
        // step may be placed on.
        let buffers = backends.iter().filter_map(|b| b.max_kernel_buffers()).min();
        let caps = passes::OperandCaps::within(buffers);
        passes::pipeline(&mut ir, &options.passes, cpu, caps)?;
        let passes::Ir {
            steps,
            types,
            mut outputs,
        } = ir;
        let persisted = outputs.split_off(requested);
        let feeds: Vec<FeedSlot> = feeds
            .into_iter()
            .filter(|f| steps.iter().any(|s| s.outputs.contains(&f.value)))
            .collect();
        let lowered = Lowered {
            steps,
            types,
            outputs,
            feeds,
            graph_inputs,
        };
        if persisted.is_empty() {
            finish(lowered, backends, options)
        } else {
            persist::compile(lowered, persisted, backends, options)
        }
    }
}

/// The graph's nodes in a given order, as steps with value bindings.
pub(crate) struct Lowering {
    /// The steps, their value types and the requested outputs.
    pub(crate) ir: passes::Ir,
    /// The inputs among them.
    pub(crate) feeds: Vec<FeedSlot>,
    /// Values of nodes marked persistent.
    pub(crate) persisted: Vec<ValueId>,
}

/// Lowers the nodes in `order` (topological, ancestors of `outputs`
/// included) to one step each.
pub(crate) fn lower(
    g: &GraphInner,
    order: Vec<NodeIndex>,
    outputs: &[&Tensor],
) -> Result<Lowering> {
    let mut first_value = vec![usize::MAX; g.dag.node_bound()];
    let mut types: Vec<TensorType> = Vec::new();
    let mut steps = Vec::with_capacity(order.len());
    let mut feeds = Vec::new();
    let mut persisted = Vec::new();
    for index in order {
        let node = g.node(index)?;
        let base = types.len();
        first_value[index.index()] = base;
        types.extend(node.outputs.iter().cloned());
        let inputs: Vec<ValueId> = node
            .inputs
            .iter()
            .map(|p| ValueId(first_value[p.node.0.index()] + p.output))
            .collect();
        if node.persist {
            persisted.extend((base..base + node.outputs.len()).map(ValueId));
        }
        if let Op::Input { name } = &node.op {
            feeds.push(FeedSlot {
                name: name.clone(),
                value: ValueId(base),
                ty: node.outputs[0].clone(),
            });
        }
        steps.push(Step {
            name: node.name.clone(),
            node: NodeId(index),
            location: node.location,
            kernel: Kernel {
                op: node.op.clone(),
                inputs: inputs.iter().map(|v| types[v.0].clone()).collect(),
                outputs: node.outputs.clone(),
            },
            inputs,
            outputs: (base..base + node.outputs.len()).map(ValueId).collect(),
            free_after: Vec::new(),
            device: 0,
            pin: node.pin,
            in_place: None,
        });
    }
    let outputs = outputs
        .iter()
        .map(|t| ValueId(first_value[t.port.node.0.index()] + t.port.output))
        .collect();
    Ok(Lowering {
        ir: passes::Ir {
            steps,
            types,
            outputs,
        },
        feeds,
        persisted,
    })
}

/// A graph lowered to steps and rewritten, before placement.
#[derive(Clone)]
pub(crate) struct Lowered {
    pub(crate) steps: Vec<Step>,
    pub(crate) types: Vec<TensorType>,
    pub(crate) outputs: Vec<ValueId>,
    pub(crate) feeds: Vec<FeedSlot>,
    pub(crate) graph_inputs: Vec<String>,
}

/// Places, schedules and plans memory for lowered steps.
pub(crate) fn finish(
    lowered: Lowered,
    backends: Vec<Arc<dyn Backend>>,
    options: &CompileOptions,
) -> Result<Plan> {
    let Lowered {
        mut steps,
        types,
        outputs,
        feeds,
        graph_inputs,
    } = lowered;

    // 5. Place each step, then move values across device edges.
    let producer = schedule::producers(&steps, types.len());
    let devices = placement::place(&steps, &producer, &outputs, &backends, options.device)?;
    for (step, d) in steps.iter_mut().zip(devices) {
        step.device = d;
    }
    let (steps, types) = placement::insert_transfers(steps, types, &backends);

    // 6. Schedule: longest remaining path first, cut into tasks.
    let (mut steps, levels) = schedule::order(steps, types.len(), rough_seconds);
    let tasks = schedule::tasks(&steps, &levels, types.len());

    // 7. Liveness: free each value right after its last use; write results
    // into operands that die there where the backend can; plan memory.
    let frees = liveness::free_lists(&steps, types.len(), &outputs);
    for (step, frees) in steps.iter_mut().zip(frees) {
        step.free_after = frees;
    }
    liveness::plan_in_place(&mut steps, &tasks, &types, &outputs, |s| {
        options.in_place && backends[s.device].supports_in_place(&s.kernel)
    });
    let memory = liveness::plan_memory(&steps, &types, backends.len());
    let mut producer = vec![None; types.len()];
    let mut readers = vec![0u32; types.len()];
    for (i, step) in steps.iter().enumerate() {
        for v in &step.outputs {
            producer[v.0] = Some(i);
        }
        for (k, v) in step.inputs.iter().enumerate() {
            if !step.inputs[..k].contains(v) {
                readers[v.0] += 1;
            }
        }
    }
    let value_device = producer
        .iter()
        .map(|p| p.map_or(0, |s: usize| steps[s].device))
        .collect();
    Ok(Plan {
        steps,
        types,
        outputs,
        feeds,
        graph_inputs,
        backends,
        tasks,
        producer,
        readers,
        value_device,
        memory,
        persist: None,
    })
}
