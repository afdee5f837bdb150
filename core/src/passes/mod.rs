//! Graph rewrites run at compile time, in order, each a plain function over
//! the lowered steps and switchable off in [`PassOptions`].

use std::sync::Arc;

use crate::backend::Backend;
use crate::plan::{Step, ValueId};
use crate::{Result, TensorType};

pub mod cse;
pub mod dce;
pub mod epilogue;
pub mod fold;
pub mod fuse;
pub mod simplify;

/// The steps being compiled, in topological order, before placement.
#[derive(Debug, Clone)]
pub struct Ir {
    /// Steps in a topological order; `device` is not yet meaningful.
    pub steps: Vec<Step>,
    /// The type of every value id (ids of removed steps stay, unused).
    pub types: Vec<TensorType>,
    /// The requested outputs; a pass that replaces one rewrites it here.
    pub outputs: Vec<ValueId>,
}

/// Which passes run. All are on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassOptions {
    /// Evaluate steps whose operands are all constants at compile time.
    pub constant_folding: bool,
    /// Compute the same op on the same operands once.
    pub cse: bool,
    /// Algebraic identities: x*1, x+0, x*0 (integers), --x, reshape of
    /// reshape, permute of permute.
    pub simplify: bool,
    /// Drop steps whose results nothing needs.
    pub dce: bool,
    /// Merge trees of elementwise steps into one fused kernel each.
    pub fusion: bool,
    /// Fold an elementwise tail into the matmul before it, and an
    /// elementwise head into the reduction after it.
    pub epilogues: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            constant_folding: true,
            cse: true,
            simplify: true,
            dce: true,
            fusion: true,
            epilogues: true,
        }
    }
}

impl PassOptions {
    /// Every pass off: the graph runs node by node as built.
    pub fn none() -> Self {
        PassOptions {
            constant_folding: false,
            cse: false,
            simplify: false,
            dce: false,
            fusion: false,
            epilogues: false,
        }
    }
}

/// How many operands the kernels fusion builds may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperandCaps {
    /// Distinct operands of a fused elementwise kernel, and of a
    /// reduction with its prologue.
    pub fused: usize,
    /// Operands of a matmul epilogue besides the two matrices.
    pub epilogue: usize,
}

impl OperandCaps {
    /// Most operands of any fused kernel: past this a program grows
    /// without saving a pass over memory worth its registers.
    pub const CEILING: usize = 16;

    /// Caps for kernels that may bind at most `buffers` storage buffers
    /// (`None`: no binding limit). A fused kernel binds its operands and
    /// its result, and keeps one binding spare; a matmul epilogue binds
    /// the two matrices and the result besides its operands. WebGPU's
    /// default of 8 (every adapter allows at least that) gives 6 and 5.
    /// Below 4 buffers nothing fuses: a binary op alone binds 3.
    pub fn within(buffers: Option<usize>) -> Self {
        let cap = |fixed: usize| {
            buffers.map_or(Self::CEILING, |b| {
                b.saturating_sub(fixed).min(Self::CEILING)
            })
        };
        OperandCaps {
            fused: cap(2),
            epilogue: cap(3),
        }
    }
}

impl Default for OperandCaps {
    /// The caps within WebGPU's default 8 storage buffers.
    fn default() -> Self {
        OperandCaps::within(Some(8))
    }
}

/// Runs the enabled passes in order. `cpu` evaluates constant folds;
/// without it folding is skipped. Fused kernels read at most `caps`
/// operands.
pub fn pipeline(
    ir: &mut Ir,
    options: &PassOptions,
    cpu: Option<&Arc<dyn Backend>>,
    caps: OperandCaps,
) -> Result<()> {
    // Evaluate steps whose operands are all constants, once, on the CPU.
    if let (true, Some(cpu)) = (options.constant_folding, cpu) {
        fold::fold_constants(ir, cpu)?;
    }
    // Compute each op on the same operands once (folded constants included).
    if options.cse {
        cse::eliminate_common_subexpressions(ir);
    }
    // Identities: x*1, x+0, x-0, x/1, i32 x*0, --x, reshape and permute chains.
    if options.simplify {
        simplify::simplify(ir);
    }
    // Drop the steps no requested output needs any more.
    if options.dce {
        dce::eliminate_dead_code(ir);
    }
    // Trees of elementwise steps become one kernel each (one pass over memory).
    if options.fusion {
        fuse::fuse_elementwise_with_cap(ir, caps.fused);
    }
    // Elementwise tails into matmuls, elementwise heads into reductions.
    if options.epilogues {
        epilogue::fuse_epilogues_with_caps(ir, caps);
    }
    Ok(())
}

/// Which value stands in for each value, as passes merge and bypass steps.
///
/// A target is always a value that survives the pass and is not itself
/// replaced, so one lookup resolves a chain.
#[derive(Debug, Clone)]
pub(crate) struct Replacements(Vec<ValueId>);

impl Replacements {
    /// No replacements among `values` ids.
    pub(crate) fn new(values: usize) -> Self {
        Replacements((0..values).map(ValueId).collect())
    }

    /// The value that stands in for `v` (`v` itself when none).
    pub(crate) fn get(&self, v: ValueId) -> ValueId {
        self.0.get(v.0).copied().unwrap_or(v)
    }

    /// From now on, readers of `from` read `to`.
    pub(crate) fn set(&mut self, from: ValueId, to: ValueId) {
        let to = self.get(to);
        if let Some(slot) = self.0.get_mut(from.0) {
            *slot = to;
        }
    }

    /// Rewrites a step's operands. Replacements keep the type, so the
    /// kernel's operand types stay as they are.
    pub(crate) fn apply_to_step(&self, step: &mut Step) {
        for v in &mut step.inputs {
            *v = self.get(*v);
        }
    }

    /// Rewrites the requested outputs.
    pub(crate) fn apply_to_outputs(&self, outputs: &mut [ValueId]) {
        for v in outputs {
            *v = self.get(*v);
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Lowering a whole graph into an [`Ir`] the way `Graph::compile` does,
    //! so each pass can be tested alone without a backend.

    use petgraph::algo::toposort;

    use super::Ir;
    use crate::{Graph, Op, Tensor};

    /// Every node of `g` as a step, in a topological order.
    pub(crate) fn lower(g: &Graph, outputs: &[&Tensor]) -> Ir {
        let inner = g.lock();
        let order = toposort(&inner.dag, None).expect("graphs are acyclic");
        crate::plan::lower(&inner, order, outputs)
            .expect("lowers")
            .ir
    }

    /// How many steps run `name` (an [`Op::name`]).
    pub(crate) fn count(ir: &Ir, name: &str) -> usize {
        ir.steps
            .iter()
            .filter(|s| s.kernel.op.name() == name)
            .count()
    }

    /// Checks the invariants every pass keeps: operands are produced by an
    /// earlier step, kernel operand types match, outputs exist.
    pub(crate) fn check(ir: &Ir) {
        let mut made = vec![false; ir.types.len()];
        for s in &ir.steps {
            assert_eq!(
                s.inputs.len(),
                s.kernel.inputs.len(),
                "{}: operand count",
                s.name
            );
            for (v, ty) in s.inputs.iter().zip(&s.kernel.inputs) {
                assert!(
                    made[v.0],
                    "{}: operand {v} is not produced before it",
                    s.name
                );
                assert_eq!(&ir.types[v.0], ty, "{}: operand {v} type", s.name);
            }
            for (v, ty) in s.outputs.iter().zip(&s.kernel.outputs) {
                assert_eq!(&ir.types[v.0], ty, "{}: result {v} type", s.name);
                made[v.0] = true;
            }
            assert_eq!(
                s.outputs.len(),
                s.kernel.outputs.len(),
                "{}: result count",
                s.name
            );
            if let Op::Constant(c) = &s.kernel.op {
                assert_eq!(c.ty(), s.kernel.outputs[0], "{}: constant type", s.name);
            }
        }
        for v in &ir.outputs {
            assert!(made[v.0], "requested {v} is not produced");
        }
    }
}

#[cfg(test)]
mod caps_tests {
    use super::OperandCaps;

    #[test]
    fn operand_caps_follow_the_binding_limit() {
        let caps = |b: Option<usize>| {
            let c = OperandCaps::within(b);
            (c.fused, c.epilogue)
        };
        assert_eq!(caps(None), (16, 16), "no limit: the ceiling");
        assert_eq!(caps(Some(8)), (6, 5), "WebGPU's default");
        assert_eq!(OperandCaps::default(), OperandCaps::within(Some(8)));
        assert_eq!(caps(Some(12)), (10, 9));
        assert_eq!(caps(Some(32)), (16, 16), "lavapipe: the ceiling");
        assert_eq!(caps(Some(1 << 20)), (16, 16));
        assert_eq!(caps(Some(4)), (2, 1));
        assert_eq!(caps(Some(3)), (1, 0), "too few for a binary op");
        assert_eq!(caps(Some(0)), (0, 0));
    }
}
